//! The data files users already have: HDF5 written by h5py with every common compression
//! filter (h5py's gzip and LZF, hdf5plugin's Blosc, LZ4, Bitshuffle and Zstd) and element type
//! (float16, bool, int8/uint16/int64 labels); NumPy .npy/.npz and Parquet through
//! `nn-data import`. Each file is written here by the real producer (h5py, numpy, pyarrow)
//! and must give bit for bit what the same data gives from a plain float32 HDF5 file.

mod common;

use common::*;
use std::path::Path;

/// Trains 2 epochs under `mpirun -n 2` and returns the final parameters.
fn train(dir: &Path, data: &Path, tag: &str) -> Vec<f32> {
    let ckpt = dir.join(format!("ckpt-{tag}.h5"));
    let (c, d) = (ckpt.display().to_string(), data.display().to_string());
    let args = [
        "--data",
        &d,
        "--checkpoint",
        &c,
        "--threads",
        "1",
        "--layers",
        "8:relu,3:softmax",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--seed",
        "3",
    ];
    let run = mpirun(2, "nn-train", &args, 120);
    assert!(run.ok(), "training on {tag} failed:\n{}", run.all());
    checkpoint_params(&ckpt)
}

fn assert_same_bits(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: parameter counts differ");
    let differ = a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    assert_eq!(differ, 0, "{what}: {differ} of {} parameters differ from the float32 file's", a.len());
}

/// Writes the files of the HDF5 tests with h5py and hdf5plugin; prints nothing.
const WRITE_H5: &str = r#"
import sys, numpy as np, h5py, hdf5plugin
d = sys.argv[1]
rng = np.random.default_rng(7)
n, f = 160, 6
x = rng.standard_normal((n, f)).astype(np.float32)
y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
def save(name, x, y, **kw):
    with h5py.File(f"{d}/{name}.h5", "w") as h:
        h.create_dataset("x", data=x, chunks=(32, f), **kw)
        h.create_dataset("y", data=y, chunks=(32,), **kw)
save("plain", x, y)
save("gzip", x, y, compression="gzip")
save("lzf", x, y, compression="lzf", shuffle=True)
save("blosc", x, y, **hdf5plugin.Blosc(cname="lz4", shuffle=hdf5plugin.Blosc.SHUFFLE))
save("blosc-zstd", x, y, **hdf5plugin.Blosc(cname="zstd", shuffle=hdf5plugin.Blosc.BITSHUFFLE))
save("lz4", x, y, **hdf5plugin.LZ4())
save("bitshuffle", x, y, **hdf5plugin.Bitshuffle())
save("bitshuffle-zstd", x, y, **hdf5plugin.Bitshuffle(cname="zstd"))
save("bitshuffle-none", x, y, **hdf5plugin.Bitshuffle(cname="none"))
save("zstd", x, y, **hdf5plugin.Zstd())
save("bzip2", x, y, **hdf5plugin.BZip2())
save("blosc2", x, y, **hdf5plugin.Blosc2())
for t in ("int8", "uint16", "int64"):
    save("y-" + t, x, y.astype(t))
# float16 features (subnormals and extremes included) and the same values as float32.
h = (x * 3).astype(np.float16)
h[0, :4] = [np.float16(6e-8), np.float16(-3e-5), np.float16(65504), np.float16(-0.0)]
save("f16", h, y, compression="gzip")
save("f16-as-f32", h.astype(np.float32), y)
# bool features and bool labels (2 classes), and the same as float32 / int64.
b = x > 0.3
save("bool", b, b[:, 3])
save("bool-as-f32", b.astype(np.float32), b[:, 3].astype(np.int64))
# An element type that is no number.
with h5py.File(f"{d}/strings.h5", "w") as hf:
    hf["x"] = np.array([["a"] * f] * n, dtype="S1")
    hf["y"] = y
"#;

/// nn-train reads every filter h5py and hdf5plugin write, and float16, bool and integer
/// labels of any width, giving the float32 file's model bit for bit; `nn-data info` and
/// nn-predict read them too; a filter this machine lacks and a string dataset are one-line
/// errors naming the file, the dataset and the filter or type.
#[test]
fn h5py_filters_and_element_types_train_like_float32() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if run_python(WRITE_H5, &[&d.display().to_string()]).is_none() {
        return;
    }
    let reference = train(d, &d.join("plain.h5"), "plain");
    for name in [
        "gzip",
        "lzf",
        "blosc",
        "blosc-zstd",
        "lz4",
        "bitshuffle",
        "bitshuffle-zstd",
        "bitshuffle-none",
        "zstd",
        "bzip2",
        "y-int8",
        "y-uint16",
        "y-int64",
    ] {
        assert_same_bits(&train(d, &d.join(format!("{name}.h5")), name), &reference, name);
    }
    for (name, same_as) in [("f16", "f16-as-f32"), ("bool", "bool-as-f32")] {
        let got = train(d, &d.join(format!("{name}.h5")), name);
        assert_same_bits(&got, &train(d, &d.join(format!("{same_as}.h5")), same_as), name);
    }

    // nn-data info and nn-predict read compressed and float16 files.
    let zstd = d.join("zstd.h5").display().to_string();
    let info = direct("nn-data", &["info", &zstd], 60).expect_ok().stdout;
    assert!(info.contains("160 rows") || info.contains("160"), "{info}");
    let f16 = d.join("f16.h5").display().to_string();
    let info = direct("nn-data", &["info", &f16], 60).expect_ok().stdout;
    assert!(info.contains("65504"), "the float16 maximum is in x's statistics:\n{info}");
    let model = d.join("ckpt-plain.h5").display().to_string();
    for data in ["bitshuffle.h5", "lzf.h5"] {
        let out = d.join(format!("pred-{data}")).display().to_string();
        let data = d.join(data).display().to_string();
        mpirun(2, "nn-predict", &["--model", &model, "--data", &data, "--out", &out], 60).expect_ok();
    }

    // A filter with no decoder here (Blosc2: no Debian package): one line naming it.
    let blosc2 = d.join("blosc2.h5");
    let run = mpirun(2, "nn-train", &["--data", &blosc2.display().to_string(), "--layers", "3:softmax"], 60);
    assert!(!run.ok());
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or_else(|| panic!("no error line:\n{}", run.all()))
        .to_string();
    assert!(
        line.contains("blosc2.h5")
            && line.contains("dataset 'x'")
            && line.contains("blosc2 filter (HDF5 filter id 32026)"),
        "{line}"
    );
    assert!(!run.all().contains("can't open directory"), "HDF5's error stack leaked:\n{}", run.all());
    let run = direct("nn-data", &["info", &blosc2.display().to_string()], 60);
    assert!(!run.ok() && run.stderr.contains("filter id 32026"), "{}", run.all());

    // Strings are no numbers: the file, the dataset and the type are named.
    let strings = d.join("strings.h5").display().to_string();
    let run = mpirun(2, "nn-train", &["--data", &strings, "--layers", "3:softmax"], 60);
    assert!(!run.ok());
    assert!(
        run.stderr.contains("strings.h5: dataset 'x' has element type")
            && run.stderr.contains("cannot be read as numbers"),
        "{}",
        run.all()
    );
}

/// x (rows, features) f32 and y (rows,) i64 or (rows[, k]) f32 of an HDF5 data file.
fn read_xy(path: &Path) -> (Vec<f32>, Vec<usize>, Vec<i64>, Vec<f32>) {
    let f = hdf5::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let x = f.dataset("x").unwrap();
    let shape = x.shape();
    let x: Vec<f32> = x.read_raw().unwrap();
    let y = f.dataset("y").unwrap();
    let is_int = matches!(y.dtype().unwrap().to_descriptor().unwrap(), hdf5::types::TypeDescriptor::Integer(_));
    if is_int {
        (x, shape, y.read_raw().unwrap(), Vec::new())
    } else {
        (x, shape, Vec::new(), y.read_raw().unwrap())
    }
}

fn assert_same_file(got: &Path, want: &Path, what: &str) {
    let (gx, gs, gl, gt) = read_xy(got);
    let (wx, ws, wl, wt) = read_xy(want);
    assert_eq!(gs, ws, "{what}: x shape");
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert!(bits(&gx) == bits(&wx), "{what}: x differs from the float32 reference");
    assert_eq!(gl, wl, "{what}: labels");
    assert!(bits(&gt) == bits(&wt), "{what}: targets differ");
}

/// Writes .npy/.npz files with numpy and their float32/int64 references with h5py.
const WRITE_NPY: &str = r#"
import sys, numpy as np, h5py
d = sys.argv[1]
rng = np.random.default_rng(11)
n, f = 300, 5
x64 = rng.standard_normal((n, f)) * 100
y = rng.integers(0, 4, n)
def ref(name, x, y):
    with h5py.File(f"{d}/{name}.ref.h5", "w") as h:
        h["x"] = x
        h["y"] = y
# x float64 (rounded to float32 as numpy does) and y int64 in two C-order files.
np.save(f"{d}/x.npy", x64); np.save(f"{d}/y.npy", y)
ref("two", x64.astype(np.float32), y)
# One Fortran-order float32 array, y (whole numbers, some negative) in column 2.
yneg = y - 1
a = np.asfortranarray(np.column_stack([x64[:, :2], yneg, x64[:, 2:]]).astype(np.float32))
assert a.flags.f_contiguous
np.save(f"{d}/cols.npy", a)
ref("cols", x64.astype(np.float32), np.searchsorted(np.unique(yneg), yneg))
# .npz, stored: float16 x and uint8 labels, under other names.
h = (x64 / 50).astype(np.float16)
np.savez(f"{d}/stored.npz", X_train=h, y_train=y.astype(np.uint8))
ref("stored", h.astype(np.float32), y)
# .npz, compressed: big-endian Fortran int16 x and bool y.
i16 = np.asfortranarray(x64.astype(">i2"))
np.savez_compressed(f"{d}/packed.npz", x=i16, y=y > 1)
ref("packed", i16.astype(np.float32), (y > 1).astype(np.int64))
# Regression targets (rows, 2) float64, x uint32.
u = rng.integers(0, 2**32 - 1, (n, f), dtype=np.uint32)
t = rng.standard_normal((n, 2))
np.savez(f"{d}/reg.npz", x=u, y=t)
ref("reg", u.astype(np.float32), t.astype(np.float32))
np.save(f"{d}/text.npy", np.array([["a"] * f] * n))
# The same arrays as CSV tables, for the split: numbers as Python prints them (float32 widened).
def csv(name, x, y):
    with open(f"{d}/{name}.csv", "w") as out:
        out.write(",".join([f"f{j}" for j in range(x.shape[1])] + ["label"]) + "\n")
        for row, l in zip(x, y):
            out.write(",".join([repr(float(v)) for v in row] + [str(int(l))]) + "\n")
csv("two", x64, y)
csv("cols", np.column_stack([a[:, :2], a[:, 3:]]), yneg)
"#;

/// `nn-data import` of .npy (two files; one Fortran-order array with --y-column) and .npz
/// (stored and compressed; float16, int16 big-endian, uint32, bool, uint8): x and y equal,
/// bit for bit, numpy's own conversion to float32/int64 written by h5py; chunked conversion
/// (3 chunks) gives the same file as one chunk; bad input names the file and the problem.
#[test]
fn numpy_arrays_import_like_float32() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if run_python(WRITE_NPY, &[&d.display().to_string()]).is_none() {
        return;
    }
    let p = |n: &str| d.join(n).display().to_string();
    let import = |args: &[&str], out: &str| {
        let out = p(out);
        let mut a = vec!["import"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--out", &out, "--chunk-rows", "128"]);
        direct("nn-data", &a, 60).expect_ok().stdout
    };
    let said = import(&[&p("x.npy"), &p("y.npy")], "two.h5");
    assert!(said.contains("300 rows x 5 features (float64; y int64)"), "{said}");
    assert_same_file(&d.join("two.h5"), &d.join("two.ref.h5"), "x.npy + y.npy");
    import(&[&p("cols.npy"), "--y-column", "2"], "cols.h5");
    assert_same_file(&d.join("cols.h5"), &d.join("cols.ref.h5"), "Fortran-order array, --y-column");
    let names: Vec<String> = hdf5::File::open(d.join("cols.h5"))
        .unwrap()
        .dataset("y")
        .unwrap()
        .attr("label_names")
        .unwrap()
        .read_raw::<hdf5::types::VarLenUnicode>()
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, ["-1", "0", "1", "2"]);
    import(&[&p("stored.npz"), "--x", "X_train", "--y", "y_train"], "stored.h5");
    // The datasets keep the archive's names: compare under them.
    let f = hdf5::File::open(d.join("stored.h5")).unwrap();
    let r = hdf5::File::open(d.join("stored.ref.h5")).unwrap();
    let x: Vec<f32> = f.dataset("X_train").unwrap().read_raw().unwrap();
    let xr: Vec<f32> = r.dataset("x").unwrap().read_raw().unwrap();
    assert!(x.iter().zip(&xr).all(|(a, b)| a.to_bits() == b.to_bits()) && x.len() == xr.len(), "float16 npz");
    let y: Vec<i64> = f.dataset("y_train").unwrap().read_raw().unwrap();
    assert_eq!(y, r.dataset("y").unwrap().read_raw::<i64>().unwrap());
    import(&[&p("packed.npz")], "packed.h5");
    assert_same_file(&d.join("packed.h5"), &d.join("packed.ref.h5"), "compressed npz");
    import(&[&p("reg.npz"), "--task", "regress"], "reg.h5");
    assert_same_file(&d.join("reg.h5"), &d.join("reg.ref.h5"), "regression npz");
    // One chunk gives the same file as three.
    let out = p("two-1.h5");
    direct("nn-data", &["import", &p("x.npy"), &p("y.npy"), "--out", &out], 60).expect_ok();
    assert_same_file(&d.join("two-1.h5"), &d.join("two.ref.h5"), "one chunk");

    // --split: the rows, parts and order of CSV import's split of the same table (one split
    // code), stratified by class; --y-column read in a first pass; chunked the same.
    for (arrays, table, tag) in [
        (vec![p("x.npy"), p("y.npy")], "two.csv", "two"),
        (vec![p("cols.npy"), "--y-column".into(), "2".into(), "--chunk-rows".into(), "77".into()], "cols.csv", "cols"),
    ] {
        let out = p(&format!("{tag}-split.h5"));
        let mut args: Vec<&str> = vec!["import"];
        args.extend(arrays.iter().map(String::as_str));
        args.extend_from_slice(&["--split", "0.25", "--seed", "4", "--out", &out]);
        let run = direct("nn-data", &args, 60).expect_ok();
        assert!(run.stdout.contains(&format!("wrote {}", p(&format!("{tag}-split-test.h5")))), "{}", run.stdout);
        let csv_out = p(&format!("{tag}-csv.h5"));
        let t = p(table);
        direct("nn-data", &["import", &t, "--label", "label", "--split", "0.25", "--seed", "4", "--out", &csv_out], 60)
            .expect_ok();
        for part in ["train", "test"] {
            let got = d.join(format!("{tag}-split-{part}.h5"));
            assert_same_file(&got, &d.join(format!("{tag}-csv-{part}.h5")), &format!("{tag} --split {part}"));
        }
        let rows = |part: &str| read_xy(&d.join(format!("{tag}-split-{part}.h5"))).1[0];
        assert_eq!((rows("train"), rows("test")), (225, 75), "{tag}");
    }
    let out = p("reg-split.h5");
    direct("nn-data", &["import", &p("reg.npz"), "--task", "regress", "--split", "0.2", "--out", &out], 60).expect_ok();
    let (whole, train, test) =
        (read_xy(&d.join("reg.ref.h5")), read_xy(&d.join("reg-split-train.h5")), read_xy(&d.join("reg-split-test.h5")));
    assert_eq!((train.1[0], test.1[0]), (240, 60));
    // Every row once, with its own targets: the parts' (x row, y row) pairs are the file's.
    let pairs = |(x, s, _, t): &(Vec<f32>, Vec<usize>, Vec<i64>, Vec<f32>)| -> Vec<Vec<u32>> {
        let mut v: Vec<Vec<u32>> = (0..s[0])
            .map(|i| x[i * s[1]..(i + 1) * s[1]].iter().chain(&t[i * 2..i * 2 + 2]).map(|f| f.to_bits()).collect())
            .collect();
        v.sort();
        v
    };
    let mut parts = pairs(&train);
    parts.extend(pairs(&test));
    parts.sort();
    assert_eq!(parts, pairs(&whole), "the regression split loses or changes rows");

    // Errors: one line naming the file and what is wrong; no output left behind.
    let fail = |args: &[&str], want: &[&str]| {
        let out = p("bad.h5");
        let mut a = vec!["import"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--out", &out]);
        let run = direct("nn-data", &a, 60);
        assert!(!run.ok(), "{args:?} succeeded");
        for w in want {
            assert!(run.stderr.contains(w), "{args:?}: no '{w}' in:\n{}", run.stderr);
        }
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(!d.join("bad.h5").exists());
    };
    fail(&[&p("stored.npz")], &["--x: no array 'x' in", "X_train, y_train"]);
    fail(&[&p("text.npy"), "--y-column", "0"], &["text.npy", "'<U1' is not supported"]);
    fail(&[&p("x.npy")], &["--y-column"]);
    fail(&[&p("cols.npy"), "--y-column", "9"], &["--y-column: 9 is not a column", "6 columns"]);
    fail(&[&p("x.npy"), &p("y.npy"), "--task", "regress", "--y-column", "1"], &["not both"]);
    let short = d.join("short.npy");
    let bytes = std::fs::read(d.join("x.npy")).unwrap();
    std::fs::write(&short, &bytes[..bytes.len() - 8]).unwrap();
    fail(&[&short.display().to_string(), &p("y.npy")], &["short.npy", "truncated"]);
}

/// Writes Parquet tables with pyarrow, and the float32/int64 data they must give with h5py.
const WRITE_PARQUET: &str = r#"
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq, h5py
d = sys.argv[1]
rng = np.random.default_rng(5)
n = 500
a = rng.standard_normal(n)
b = rng.integers(-1000, 1000, n).astype(np.int32)
c = rng.integers(0, 60000, n).astype(np.uint16)
flag = rng.random(n) > 0.5
colors = np.array(["red", "green", "blue"])[rng.integers(0, 3, n)]
sizes = np.array(["S", "M", "L", "XL"])[rng.integers(0, 4, n)]
label = np.array(["cat", "dog", "bird"])[rng.integers(0, 3, n)]
ident = np.arange(n)
t = pa.table({
    "id": pa.array(ident),
    "a": pa.array(a),
    "b": pa.array(b),
    "c": pa.array(c),
    "flag": pa.array(flag),
    "color": pa.array(colors).dictionary_encode(),
    "size": pa.array(sizes),
    "label": pa.array(label),
})
# Several row groups and data pages, snappy (pyarrow's default) and zstd.
pq.write_table(t, f"{d}/t.parquet", row_group_size=128, data_page_size=1024)
pq.write_table(t, f"{d}/t-zstd.parquet", compression="zstd", use_dictionary=False)
def onehot(v):
    vocab = sorted(set(v))
    return np.stack([(v == w) for w in vocab], 1).astype(np.float32)
x = np.column_stack([a.astype(np.float32), b.astype(np.float32), c.astype(np.float32),
                     flag.astype(np.float32), onehot(colors), onehot(sizes)])
with h5py.File(f"{d}/t.ref.h5", "w") as h:
    h["x"] = x
    h["y"] = np.searchsorted(sorted(set(label)), label).astype(np.int64)
# Regression on a float column, the rest numeric.
pq.write_table(pa.table({"a": a, "b": b, "target": a * 2 + 1}), f"{d}/r.parquet")
with h5py.File(f"{d}/r.ref.h5", "w") as h:
    h["x"] = np.column_stack([a.astype(np.float32), b.astype(np.float32)])
    h["y"] = (a * 2 + 1).astype(np.float32)
# Bad inputs: a null feature, a timestamp column.
pq.write_table(pa.table({"a": pa.array([1.0, None, 3.0]), "y": [0, 1, 0]}), f"{d}/null.parquet")
pq.write_table(pa.table({"when": pa.array(np.array(["2020-01-01"] * 3, dtype="datetime64[ns]")), "a": [1.0, 2, 3], "y": [0, 1, 0]}), f"{d}/time.parquet")
"#;

/// `nn-data import` of Parquet (pyarrow; several row groups and pages, snappy and zstd,
/// dictionary-encoded and plain strings, bool, int32, uint16, float64, an ID dropped with
/// --drop): x and y equal the float32/int64 data written by h5py bit for bit, one-hot columns
/// in sorted order; a null and a timestamp are one-line errors naming the column.
#[test]
fn parquet_tables_import_like_float32() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if run_python(WRITE_PARQUET, &[&d.display().to_string()]).is_none() {
        return;
    }
    let p = |n: &str| d.join(n).display().to_string();
    for (input, chunk) in [("t.parquet", "100"), ("t-zstd.parquet", "1000")] {
        let out = p(&format!("{input}.h5"));
        let run = direct(
            "nn-data",
            &["import", &p(input), "--label", "label", "--drop", "id", "--out", &out, "--chunk-rows", chunk],
            60,
        )
        .expect_ok();
        assert!(run.stdout.contains("read 500 rows x 8 columns"), "{}", run.stdout);
        assert!(run.stdout.contains("500 rows x 11 features; 3 classes: bird "), "{}", run.stdout);
        assert!(run.stdout.contains("  color: categorical, 3 values -> 3 columns"), "{}", run.stdout);
        assert_same_file(Path::new(&out), &d.join("t.ref.h5"), input);
        let f = hdf5::File::open(&out).unwrap();
        let names: Vec<String> = f
            .dataset("x")
            .unwrap()
            .attr("feature_names")
            .unwrap()
            .read_raw::<hdf5::types::VarLenUnicode>()
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(names[4..7], ["color=blue", "color=green", "color=red"]);
    }
    let out = p("r.h5");
    direct("nn-data", &["import", &p("r.parquet"), "--label", "target", "--task", "regress", "--out", &out], 60)
        .expect_ok();
    assert_same_file(Path::new(&out), &d.join("r.ref.h5"), "regression");
    let run = direct("nn-data", &["import", &p("null.parquet"), "--label", "y", "--out", &p("bad.h5")], 60);
    assert!(
        !run.ok() && run.stderr.contains("null.parquet: row 2: column 'a': empty field (a missing value); 1 row has"),
        "{}",
        run.all()
    );
    let run = direct("nn-data", &["import", &p("time.parquet"), "--label", "y", "--out", &p("bad.h5")], 60);
    assert!(
        !run.ok() && run.stderr.contains("column 'when' is a timestamp") && run.stderr.contains("--drop when"),
        "{}",
        run.all()
    );
    assert!(!d.join("bad.h5").exists());
    let run = direct("nn-data", &["import", &p("t.parquet"), "--label", "nope", "--out", &p("bad.h5")], 60);
    assert!(!run.ok() && run.stderr.contains("--label: no column 'nope'"), "{}", run.all());
}

/// Writes one table twice, with pyarrow as Parquet (nulls in numeric and text columns, a
/// dictionary-encoded string column, a bool, an int column read as categories, a float32, an
/// ID column; several row groups) and as the CSV file a user would have of it (null as an
/// empty field or NA, the bool as 0/1, numbers as Python prints them), plus bad tables.
const WRITE_TABLE_TWICE: &str = r#"
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
d = sys.argv[1]
rng = np.random.default_rng(17)
n = 403
def holes(values, p):
    return [None if rng.random() < p else v for v in values]
a = holes(rng.standard_normal(n) * 10, 0.08)
b = holes(rng.integers(-50, 50, n).tolist(), 0.05)
c = rng.standard_normal(n).astype(np.float32)
color = holes(np.array(["red", "green", "blue", "teal", "plum"])[rng.integers(0, 5, n)].tolist(), 0.1)
flag = (rng.random(n) > 0.3).tolist()
zone = rng.integers(1, 9, n).tolist()
ident = [f"u{i:05d}" for i in rng.permutation(n)]
label = np.array(["bird", "cat", "dog"])[rng.integers(0, 3, n)].tolist()
t = pa.table({
    "id": pa.array(ident),
    "a": pa.array(a, pa.float64()),
    "b": pa.array(b, pa.int64()),
    "c": pa.array(c, pa.float32()),
    "color": pa.array(color, pa.string()).dictionary_encode(),
    "flag": pa.array(flag),
    "zone": pa.array(zone, pa.int32()),
    "label": pa.array(label, pa.string()),
})
pq.write_table(t, f"{d}/table.parquet", row_group_size=100)
def cell(v, i):
    if v is None:
        return "NA" if i % 2 else ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)
with open(f"{d}/table.csv", "w") as f:
    f.write(",".join(t.column_names) + "\n")
    cols = [t.column(k).to_pylist() for k in t.column_names]
    for i in range(n):
        f.write(",".join(cell(col[i], i) for col in cols) + "\n")
pq.write_table(pa.table({"a": [1.0, 2, 3], "y": ["x", None, "z"]}), f"{d}/nolabel.parquet")
pq.write_table(pa.table({"tags": pa.array([[1, 2], [3], []]), "a": [1.0, 2, 3], "y": [0, 1, 0]}), f"{d}/list.parquet")
"#;

/// x's bits, x's shape, y, feature names, label names and the /encoding JSON of a data file.
type ImportResult = (Vec<u32>, Vec<usize>, Vec<i64>, Vec<String>, Vec<String>, String);

/// Every dataset and attribute an import writes that must not depend on the input's format.
fn import_result(path: &Path) -> ImportResult {
    let f = hdf5::File::open(path).unwrap();
    let x = f.dataset("x").unwrap();
    let strings = |ds: &hdf5::Dataset, name: &str| -> Vec<String> {
        ds.attr(name)
            .map(|a| a.read_raw::<hdf5::types::VarLenUnicode>().unwrap().iter().map(|s| s.to_string()).collect())
            .unwrap_or_default()
    };
    let y = f.dataset("y").unwrap();
    let encoding = f.dataset("encoding").unwrap().read_scalar::<hdf5::types::VarLenUnicode>().unwrap().to_string();
    (
        x.read_raw::<f32>().unwrap().iter().map(|v| v.to_bits()).collect(),
        x.shape(),
        y.read_raw::<i64>().unwrap(),
        strings(&x, "feature_names"),
        strings(&y, "label_names"),
        encoding,
    )
}

/// The same table as Parquet (read a few rows at a time, across row groups) and as CSV
/// imports to bit-identical x and y and the identical stored encoding, under `--missing fill`
/// with a stratified `--split` and under `--missing drop` with `--max-categories`; the ID
/// column is dropped, nulls are missing values. A nested column and a missing label are
/// one-line errors naming the file and column; nothing is written.
#[test]
fn parquet_and_csv_of_one_table_import_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    if run_python(WRITE_TABLE_TWICE, &[&d.display().to_string()]).is_none() {
        return;
    }
    let p = |n: &str| d.join(n).display().to_string();
    let fill = ["--missing", "fill", "--categorical", "zone", "--split", "0.25", "--seed", "9"];
    let drop = ["--missing", "drop", "--max-categories", "3"];
    for (tag, opts) in [("fill", &fill[..]), ("drop", &drop[..])] {
        let mut said = Vec::new();
        for (input, extra) in [("table.csv", &[][..]), ("table.parquet", &["--chunk-rows", "37"][..])] {
            let out = p(&format!("{tag}-{input}.h5"));
            let input_path = p(input);
            let mut args = vec!["import", &input_path];
            args.extend_from_slice(&["--label", "label", "--out", &out]);
            args.extend_from_slice(opts);
            args.extend_from_slice(extra);
            let run = direct("nn-data", &args, 60).expect_ok();
            assert!(run.stdout.contains("  id: dropped (an identifier: all "), "{}", run.stdout);
            said.push(
                run.stdout
                    .lines()
                    .filter(|l| l.starts_with("  ") && l.contains(": "))
                    .take(8)
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
        assert_eq!(said[0], said[1], "{tag}: the column lines differ");
        let parts: &[&str] = if tag == "fill" { &["-train", "-test"] } else { &[""] };
        for part in parts {
            let name = |input: &str| {
                let f = format!("{tag}-{input}.h5");
                d.join(if part.is_empty() { f } else { f.replace(".h5", &format!("{part}.h5")) })
            };
            let (csv, parquet) = (import_result(&name("table.csv")), import_result(&name("table.parquet")));
            assert!(csv.0 == parquet.0, "{tag}{part}: x differs between CSV and Parquet");
            assert_eq!(
                (&csv.1, &csv.2, &csv.3, &csv.4),
                (&parquet.1, &parquet.2, &parquet.3, &parquet.4),
                "{tag}{part}"
            );
            assert_eq!(csv.5, parquet.5, "{tag}{part}: /encoding differs");
            let enc: serde_json::Value = serde_json::from_str(&parquet.5).unwrap();
            let kinds: Vec<&str> =
                enc["columns"].as_array().unwrap().iter().map(|c| c["kind"].as_str().unwrap()).collect();
            let zone = if tag == "fill" { "categorical" } else { "numeric" };
            assert_eq!(kinds, ["dropped", "numeric", "numeric", "numeric", "categorical", "numeric", zone, "label"]);
            assert_eq!(csv.4, ["bird", "cat", "dog"]);
            if tag == "fill" {
                assert!(enc["columns"][1]["fill"].as_f64().is_some() && csv.3.contains(&"color=(missing)".to_string()));
                assert!(csv.3.contains(&"zone=8".to_string()));
            } else {
                assert!(csv.3.contains(&"color=(other)".to_string()));
            }
        }
    }
    // A missing label is never filled; a nested column is refused by name.
    let run = direct(
        "nn-data",
        &["import", &p("nolabel.parquet"), "--label", "y", "--missing", "fill", "--out", &p("bad.h5")],
        60,
    );
    assert!(!run.ok() && run.stderr.contains("nolabel.parquet: row 2: column 'y': empty field"), "{}", run.all());
    let run = direct("nn-data", &["import", &p("list.parquet"), "--label", "y", "--out", &p("bad.h5")], 60);
    assert!(
        !run.ok()
            && run.stderr.contains("list.parquet: column 'tags' is a nested column")
            && run.stderr.contains("--drop tags")
            && run.stderr.lines().count() == 1,
        "{}",
        run.all()
    );
    let out = p("list.h5");
    direct("nn-data", &["import", &p("list.parquet"), "--label", "y", "--drop", "tags", "--out", &out], 60).expect_ok();
    assert!(!d.join("bad.h5").exists());
}

/// A Parquet table of about 100 MB (uncompressed float32 columns, 8 row groups) imports with
/// a peak resident memory well under its size: the conversion holds one batch of rows.
#[test]
fn parquet_import_memory_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = r#"
import sys, numpy as np, pyarrow as pa, pyarrow.parquet as pq
n, f = 1_000_000, 24
rng = np.random.default_rng(1)
cols = {f"f{j}": rng.standard_normal(n, dtype=np.float32) for j in range(f)}
cols["y"] = rng.integers(0, 5, n)
pq.write_table(pa.table(cols), sys.argv[1], compression="none", use_dictionary=False, row_group_size=n // 8)
"#;
    let input = d.join("big.parquet");
    if run_python(script, &[&input.display().to_string()]).is_none() {
        return;
    }
    let size = std::fs::metadata(&input).unwrap().len();
    let bound: u64 = 64 << 20;
    assert!(size > bound + (32 << 20), "the table ({size} bytes) must be larger than the bound");
    let out = d.join("big.h5").display().to_string();
    let run =
        direct("nn-data", &["import", &input.display().to_string(), "--label", "y", "--out", &out], 120).expect_ok();
    let peak: u64 = run
        .stdout
        .split("peak memory ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory in:\n{}", run.stdout));
    assert!(peak << 20 < bound, "peak resident memory {peak} MB for a {} MB table:\n{}", size >> 20, run.stdout);
    let f = hdf5::File::open(&out).unwrap();
    assert_eq!(f.dataset("x").unwrap().shape(), [1_000_000, 24]);
    eprintln!("{}", run.stdout);
}
