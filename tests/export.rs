//! nn-export checked by the real consumers of each format: the ONNX model checked by
//! onnx.checker and run by ONNX Runtime and by tract (from Rust), the `.keras` file and the `.weights.h5` loaded and
//! run by Keras 3 (jax backend), the safetensors file read back by the safetensors crate. Each one's outputs on
//! the digits test set are compared with nn-predict's for the same checkpoint.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A trained checkpoint and nn-predict's outputs for a test set.
struct Trained {
    checkpoint: PathBuf,
    /// The data nn-predict ran on (x only is used).
    data: PathBuf,
    /// nn-predict's `probabilities`: (rows, k).
    predictions: Vec<f32>,
    rows: usize,
    features: usize,
    /// The layers in Keras terms, for the Python side building the same model by hand.
    keras_layers: &'static str,
    standardize: bool,
}

/// Models trained once per test binary, shared by the tests (training takes about a second).
struct Models {
    _dir: tempfile::TempDir,
    /// digits, relu + dropout + softmax, no scaling.
    plain: Trained,
    /// digits with --standardize, tanh + sigmoid + softmax.
    standardized: Trained,
    /// a regression set, linear output.
    regression: Trained,
    /// digits through every other activation nn-train has.
    activations: Trained,
    /// digits with batchnorm and layernorm layers (their own momentum and epsilon too).
    normalized: Trained,
    /// a CSV table imported with --standardize-target: the exports scale the output back.
    target: Trained,
}

impl Models {
    /// Every model with its name, for the tests that check each format on all of them.
    fn all(&self) -> [(&'static str, &Trained); 6] {
        [
            ("plain", &self.plain),
            ("standardized", &self.standardized),
            ("regression", &self.regression),
            ("activations", &self.activations),
            ("normalized", &self.normalized),
            ("target", &self.target),
        ]
    }
}

fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (train, test) = digits();
        let plain = train_and_predict(
            dir.path(),
            "plain",
            &train,
            &test,
            &["--layers", "32:relu,dropout:0.2,10:softmax"],
            r#"[["dense", 32, "relu"], ["dropout", 0.2], ["dense", 10, "softmax"]]"#,
            false,
        );
        let standardized = train_and_predict(
            dir.path(),
            "std",
            &train,
            &test,
            &["--layers", "24:tanh,16:sigmoid,10:softmax", "--standardize"],
            r#"[["dense", 24, "tanh"], ["dense", 16, "sigmoid"], ["dense", 10, "softmax"]]"#,
            true,
        );
        let (rtrain, rtest) = (dir.path().join("reg-train.h5"), dir.path().join("reg-test.h5"));
        for (path, first) in [(&rtrain, "0"), (&rtest, "2000")] {
            direct(
                "nn-data",
                &[
                    "gen",
                    "--task",
                    "regress",
                    "--rows",
                    "400",
                    "--first-row",
                    first,
                    "--features",
                    "6",
                    "--seed",
                    "3",
                    "--out",
                    &s(path),
                ],
                60,
            )
            .expect_ok();
        }
        let regression = train_and_predict(
            dir.path(),
            "reg",
            &s(&rtrain),
            &s(&rtest),
            &["--layers", "16:relu,1:linear", "--loss", "mse", "--standardize"],
            r#"[["dense", 16, "relu"], ["dense", 1, "linear"]]"#,
            true,
        );
        let activations = train_and_predict(
            dir.path(),
            "act",
            &train,
            &test,
            &["--layers", "16:gelu,16:leaky_relu=0.1,16:elu,16:selu,16:softplus,16:swish,12:leaky_relu,10:softmax"],
            r#"[["dense", 16, "gelu"], ["dense", 16, "linear"], ["leaky_relu", 0.1], ["dense", 16, "elu"],
                ["dense", 16, "selu"], ["dense", 16, "softplus"], ["dense", 16, "swish"],
                ["dense", 12, "leaky_relu"], ["dense", 10, "softmax"]]"#,
            false,
        );
        let normalized = train_and_predict(
            dir.path(),
            "norm",
            &train,
            &test,
            &["--layers", "32:relu,batchnorm,16:gelu,layernorm:epsilon=1e-5,batchnorm:momentum=0.9,10:softmax"],
            r#"[["dense", 32, "relu"], ["batchnorm", 0.99, 0.001], ["dense", 16, "gelu"], ["layernorm", 1e-5],
                ["batchnorm", 0.9, 0.001], ["dense", 10, "softmax"]]"#,
            false,
        );
        let target = standardized_target_model(dir.path());
        Models { _dir: dir, plain, standardized, regression, activations, normalized, target }
    })
}

/// A regression on a CSV table whose target (about 5 +- 1.5) was standardized at import:
/// nn-predict reports it in its own units, and so must every export.
fn standardized_target_model(dir: &Path) -> Trained {
    let u = common::uniform(900, 11);
    let mut text = String::from("a,b,c,y\n");
    for r in u.chunks_exact(3) {
        text += &format!("{},{},{},{}\n", r[0], r[1], r[2], 5.0 + 2.0 * (r[0] - r[1]) + r[2]);
    }
    let csv = dir.join("target.csv");
    std::fs::write(&csv, text).unwrap();
    let (train, test) = (dir.join("target-train.h5"), dir.join("target-test.h5"));
    let args = ["import", &s(&csv), "--label", "y", "--task", "regress", "--standardize-target", "--split", "0.25"];
    let outs = ["--out-train", &s(&train), "--out-test", &s(&test)];
    direct("nn-data", &[&args[..], &outs[..]].concat(), 60).expect_ok();
    let flags = ["--layers", "16:relu,1:linear", "--loss", "mse"];
    let mut model = train_and_predict(dir, "target", &s(&train), &s(&test), &flags, "", false);
    // The hand-built Keras model ends with the same Rescaling (std, mean from the encoding).
    let snap = nn_train::io::checkpoint::load(&model.checkpoint).unwrap();
    let encoding: serde_json::Value = serde_json::from_str(snap.encoding.as_deref().unwrap()).unwrap();
    let t = &encoding["label"]["standardize"];
    let layers =
        format!(r#"[["dense", 16, "relu"], ["dense", 1, "linear"], ["rescaling", {}, {}]]"#, t["std"], t["mean"]);
    model.keras_layers = Box::leak(layers.into_boxed_str());
    model
}

fn train_and_predict(
    dir: &Path,
    name: &str,
    train: &str,
    test: &str,
    flags: &[&str],
    keras_layers: &'static str,
    standardize: bool,
) -> Trained {
    let checkpoint = dir.join(format!("{name}.h5"));
    let mut args = vec!["--data", train, "--epochs", "3", "--batch-size", "32", "--seed", "7"];
    args.extend_from_slice(flags);
    let ck = s(&checkpoint);
    args.extend_from_slice(&["--checkpoint", &ck]);
    mpirun(2, "nn-train", &args, 120).expect_ok();
    let pred = dir.join(format!("{name}-pred.h5"));
    direct("nn-predict", &["--model", &ck, "--data", test, "--out", &s(&pred)], 60).expect_ok();
    let file = hdf5::File::open(&pred).unwrap();
    let ds = file.dataset("probabilities").unwrap();
    let rows = ds.shape()[0];
    let predictions: Vec<f32> = ds.read_raw().unwrap();
    let features = hdf5::File::open(test).unwrap().dataset("x").unwrap().shape()[1];
    Trained { checkpoint, data: PathBuf::from(test), predictions, rows, features, keras_layers, standardize }
}

fn read_x(path: &Path) -> Vec<f32> {
    hdf5::File::open(path).unwrap().dataset("x").unwrap().read_raw().unwrap()
}

fn export(model: &Trained, out: &Path, format: Option<&str>) -> Run {
    let (ck, o) = (s(&model.checkpoint), s(out));
    let mut args = vec!["--model", ck.as_str(), "--out", o.as_str()];
    if let Some(f) = format {
        args.extend_from_slice(&["--format", f]);
    }
    direct("nn-export", &args, 60)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Checks the ONNX file with onnx.checker (full check, with shape inference), runs it in ONNX
/// Runtime on the whole test set and on a single row (the batch dimension is symbolic), and
/// prints the largest differences from nn-predict's outputs and the model's interface.
const ONNX_CHECK: &str = r#"
import json, sys
import h5py, numpy as np, onnx, onnxruntime as ort
path, data, pred = sys.argv[1:4]
onnx.checker.check_model(onnx.load(path), full_check=True)
x = h5py.File(data)["x"][()].astype(np.float32)
want = h5py.File(pred)["probabilities"][()]
s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
all_rows = s.run(["probabilities"], {"x": x})[0]
one_row = s.run(["probabilities"], {"x": x[:1]})[0]
print(json.dumps({
    "all": float(np.abs(all_rows - want).max()),
    "one": float(np.abs(one_row - want[:1]).max()),
    "inputs": [i.name for i in s.get_inputs()],
    "outputs": [o.name for o in s.get_outputs()],
    "metadata": s.get_modelmeta().custom_metadata_map,
}))
"#;

#[test]
fn onnx_runs_in_onnx_runtime_and_matches_nn_predict() {
    let m = models();
    let dir = tempfile::tempdir().unwrap();
    for (name, model) in m.all() {
        let out = dir.path().join(format!("{name}.onnx"));
        let run = export(model, &out, None).expect_ok();
        assert!(run.stdout.contains("onnx"), "{}", run.stdout);

        // The graph as written, decoded with the exporter's own message types: the opset, the
        // interface and the operators.
        use nn_train::export::onnx_proto::ModelProto;
        let proto: ModelProto = prost::Message::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
        assert!(proto.opset_import.iter().any(|o| o.domain.is_empty() && o.version >= 17));
        let graph = proto.graph.unwrap();
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(!ops.contains(&"Dropout"), "{ops:?}");
        assert_eq!(ops[..2] == ["Sub", "Div"], model.standardize, "{ops:?}");
        assert_eq!(ops.ends_with(&["Mul", "Add"]), name == "target", "{ops:?}");
        assert_eq!(ops.iter().filter(|&&o| o == "Gemm").count(), model.keras_layers.matches("\"dense\"").count());
        for (op, kind) in [("BatchNormalization", "\"batchnorm\""), ("LayerNormalization", "\"layernorm\"")] {
            assert_eq!(ops.iter().filter(|&&o| o == op).count(), model.keras_layers.matches(kind).count(), "{ops:?}");
        }

        let Some(result) = run_python(ONNX_CHECK, &[&s(&out), &s(&model.data), &s(&prediction_file(model))]) else {
            nn_train::test_skip::skipped(&format!("running the {name} ONNX model in ONNX Runtime"), "no python3");
            return;
        };
        let result: serde_json::Value = serde_json::from_str(result.lines().last().unwrap()).unwrap();
        eprintln!("onnx {name}: {result}");
        assert_eq!(result["inputs"], serde_json::json!(["x"]));
        assert_eq!(result["outputs"], serde_json::json!(["probabilities"]));
        let layers: Vec<serde_json::Value> =
            serde_json::from_str(result["metadata"]["layers"].as_str().expect("layers metadata")).unwrap();
        assert_eq!(layers.len(), nn_train::io::checkpoint::load(&model.checkpoint).unwrap().config.layers.len());
        for key in ["all", "one"] {
            let diff = result[key].as_f64().unwrap();
            assert!(diff <= 1e-5, "{name}: ONNX Runtime ({key} rows) differs from nn-predict by {diff}");
        }
    }
}

/// The exported ONNX model run from Rust by tract (a maintained pure-Rust ONNX runtime, as a
/// Rust or C++ service would load it): every model, with its batch dimension left symbolic,
/// on the whole test set and on one row, against nn-predict's outputs.
#[test]
fn onnx_runs_in_tract_from_rust_and_matches_nn_predict() {
    use tract_onnx::prelude::*;
    let m = models();
    let dir = tempfile::tempdir().unwrap();
    for (name, model) in m.all() {
        let out = dir.path().join(format!("{name}.onnx"));
        export(model, &out, None).expect_ok();
        let runnable = tract_onnx::onnx()
            .model_for_path(&out)
            .and_then(|g| g.into_optimized())
            .and_then(|g| g.into_runnable())
            .unwrap_or_else(|e| panic!("{name}: tract cannot load the exported model: {e:?}"));
        let x = read_x(&model.data);
        let k = model.predictions.len() / model.rows;
        for rows in [model.rows, 1] {
            let input =
                tract_ndarray::Array2::from_shape_vec((rows, model.features), x[..rows * model.features].to_vec())
                    .unwrap();
            let result = runnable.run(tvec!(Tensor::from(input).into())).unwrap();
            let got = result[0].to_array_view::<f32>().unwrap();
            assert_eq!(got.shape(), [rows, k], "{name}");
            let got: Vec<f32> = got.iter().copied().collect();
            let diff = max_abs_diff(&got, &model.predictions[..rows * k]);
            eprintln!("tract {name} ({rows} rows): max |diff| {diff:.2e}");
            assert!(diff <= 1e-5, "{name}: tract ({rows} rows) differs from nn-predict by {diff}");
        }
    }
}

/// nn-predict's output file for `model` (written beside its checkpoint).
fn prediction_file(model: &Trained) -> PathBuf {
    model.checkpoint.with_file_name(format!("{}-pred.h5", model.checkpoint.file_stem().unwrap().to_string_lossy()))
}

#[test]
fn safetensors_read_back_with_the_crate() {
    let m = models();
    let dir = tempfile::tempdir().unwrap();
    for (name, model) in [("plain", &m.plain), ("standardized", &m.standardized)] {
        let out = dir.path().join(format!("{name}.safetensors"));
        export(model, &out, None).expect_ok();
        let bytes = std::fs::read(&out).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().expect("__metadata__");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensor = |n: &str| -> (Vec<usize>, Vec<f32>) {
            let t = st.tensor(n).unwrap_or_else(|e| panic!("{name}: tensor {n}: {e}"));
            assert_eq!(t.dtype(), safetensors::Dtype::F32);
            let v = t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (t.shape().to_vec(), v)
        };
        // Exactly the checkpoint's numbers.
        let snap = nn_train::io::checkpoint::load(&model.checkpoint).unwrap();
        let layers: Vec<serde_json::Value> = serde_json::from_str(&meta["layers"]).unwrap();
        let dense: Vec<&serde_json::Value> = layers.iter().filter(|l| l["type"] == "dense").collect();
        let mut flat = Vec::new();
        for (i, layer) in dense.iter().enumerate() {
            let (kshape, k) = tensor(&format!("layer_{i}.kernel"));
            let (bshape, b) = tensor(&format!("layer_{i}.bias"));
            assert_eq!(kshape[1], layer["units"].as_u64().unwrap() as usize);
            assert_eq!(bshape, [kshape[1]]);
            flat.extend(k);
            flat.extend(b);
        }
        assert_eq!(flat, snap.params, "{name}: safetensors weights are not the checkpoint's");
        assert_eq!(layers.iter().any(|l| l["type"] == "dropout"), name == "plain");
        assert_eq!(st.names().iter().any(|n| n.starts_with("scaling.")), model.standardize);

        // A forward pass written here from the file's tensors and metadata alone reproduces
        // nn-predict's outputs.
        let mut x = read_x(&model.data);
        let d = model.features;
        if model.standardize {
            let (_, mean) = tensor("scaling.mean");
            let (_, std) = tensor("scaling.std");
            for row in x.chunks_exact_mut(d) {
                for ((v, m), sd) in row.iter_mut().zip(&mean).zip(&std) {
                    *v = (*v - m) / sd;
                }
            }
        }
        let mut h = x;
        let mut width = d;
        for (i, layer) in dense.iter().enumerate() {
            let (_, k) = tensor(&format!("layer_{i}.kernel"));
            let (_, b) = tensor(&format!("layer_{i}.bias"));
            let units = b.len();
            let mut next = vec![0.0f32; model.rows * units];
            for (input, row) in h.chunks_exact(width).zip(next.chunks_exact_mut(units)) {
                for (u, (out, bias)) in row.iter_mut().zip(&b).enumerate() {
                    let z = bias + input.iter().enumerate().map(|(j, v)| v * k[j * units + u]).sum::<f32>();
                    *out = match layer["activation"].as_str().unwrap() {
                        "relu" => z.max(0.0),
                        "tanh" => z.tanh(),
                        "sigmoid" => 1.0 / (1.0 + (-z).exp()),
                        _ => z,
                    };
                }
                if layer["activation"] == "softmax" {
                    let max = row.iter().copied().fold(f32::MIN, f32::max);
                    row.iter_mut().for_each(|v| *v = (*v - max).exp());
                    let sum: f32 = row.iter().sum();
                    row.iter_mut().for_each(|v| *v /= sum);
                }
            }
            h = next;
            width = units;
        }
        let diff = max_abs_diff(&h, &model.predictions);
        eprintln!("safetensors {name}: max |forward from the file - nn-predict| = {diff:e}");
        assert!(diff <= 1e-5, "{name}: {diff}");
    }
    // Normalization layers: norm_<j>.* hold exactly the checkpoint's gamma, beta and moving
    // statistics, in layer order.
    let out = dir.path().join("normalized.safetensors");
    export(&m.normalized, &out, None).expect_ok();
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensor = |n: &str| -> Vec<f32> {
        let t = st.tensor(n).unwrap_or_else(|e| panic!("tensor {n}: {e}"));
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    };
    let snap = nn_train::io::checkpoint::load(&m.normalized.checkpoint).unwrap();
    let model = nn_train::engine::model::Model::new(snap.in_dim, &snap.config.layers);
    let mut moving = Vec::new();
    for (j, (_, layer, gamma, beta)) in model.norm_layers().enumerate() {
        assert_eq!(tensor(&format!("norm_{j}.gamma")), snap.params[gamma.range()]);
        assert_eq!(tensor(&format!("norm_{j}.beta")), snap.params[beta.range()]);
        if layer.kind.has_moving() {
            moving.extend(tensor(&format!("norm_{j}.moving_mean")));
            moving.extend(tensor(&format!("norm_{j}.moving_variance")));
        }
    }
    assert_eq!(moving, snap.moving);
    assert!(st.names().iter().filter(|n| n.starts_with("norm_")).count() == 10, "{:?}", st.names());

    // A standardized target: its mean and std as tensors, applied after the last layer.
    let out = dir.path().join("target.safetensors");
    export(&m.target, &out, None).expect_ok();
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let scalar = |n: &str| f32::from_le_bytes(st.tensor(n).unwrap().data().try_into().unwrap());
    let snap = nn_train::io::checkpoint::load(&m.target.checkpoint).unwrap();
    let encoding: serde_json::Value = serde_json::from_str(snap.encoding.as_deref().unwrap()).unwrap();
    let t = &encoding["label"]["standardize"];
    assert_eq!(scalar("target_scaling.mean"), t["mean"].as_f64().unwrap() as f32);
    assert_eq!(scalar("target_scaling.std"), t["std"].as_f64().unwrap() as f32);
}

/// Loads the `.keras` file with keras.models.load_model and the `.weights.h5` into a
/// Sequential built by hand, predicts on the test set, and prints the largest differences
/// from nn-predict's outputs.
const KERAS_CHECK: &str = r#"
import json, os, sys, zipfile
os.environ["KERAS_BACKEND"] = "jax"
import h5py, keras, numpy as np
keras_file, weights_file, data, pred, layers, standardize = sys.argv[1:7]
x = h5py.File(data)["x"][()]
want = h5py.File(pred)["probabilities"][()]
with zipfile.ZipFile(keras_file) as z:
    assert sorted(z.namelist()) == ["config.json", "metadata.json", "model.weights.h5"], z.namelist()
model = keras.models.load_model(keras_file)
assert type(model).__name__ == "Sequential"
kinds = [type(l).__name__ for l in model.layers]
built = [keras.Input(shape=(x.shape[1],))]
if standardize == "1":
    built.append(keras.layers.Normalization())
for l in json.loads(layers):
    if l[0] == "dense":
        built.append(keras.layers.Dense(l[1], activation=l[2]))
    elif l[0] == "leaky_relu":
        built.append(keras.layers.LeakyReLU(negative_slope=l[1]))
    elif l[0] == "batchnorm":
        built.append(keras.layers.BatchNormalization(momentum=l[1], epsilon=l[2]))
    elif l[0] == "layernorm":
        built.append(keras.layers.LayerNormalization(epsilon=l[1]))
    elif l[0] == "rescaling":
        built.append(keras.layers.Rescaling(scale=l[1], offset=l[2]))
    else:
        built.append(keras.layers.Dropout(l[1]))
hand = keras.Sequential(built)
hand.load_weights(weights_file)
assert kinds == [type(l).__name__ for l in hand.layers], (kinds, hand.layers)
for l, h in zip(model.layers, hand.layers):
    if type(l).__name__ == "BatchNormalization":
        assert (l.momentum, l.epsilon) == (h.momentum, h.epsilon), (l.momentum, l.epsilon)
        assert [w.path.split("/")[-1] for w in l.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    if type(l).__name__ == "LayerNormalization":
        assert l.epsilon == h.epsilon, l.epsilon
a = model.predict(x, verbose=0)
b = hand.predict(x, verbose=0)
print(json.dumps({"keras": float(np.abs(a - want).max()), "weights": float(np.abs(b - want).max()), "layers": kinds}))
"#;

#[test]
fn keras_loads_the_model_and_the_weights() {
    let m = models();
    let dir = tempfile::tempdir().unwrap();
    for (name, model) in m.all() {
        let keras_file = dir.path().join(format!("{name}.keras"));
        let weights = dir.path().join(format!("{name}.weights.h5"));
        export(model, &keras_file, Some("keras")).expect_ok();
        export(model, &weights, None).expect_ok();
        let pred = prediction_file(model);
        let Some(out) = run_python(
            KERAS_CHECK,
            &[
                &s(&keras_file),
                &s(&weights),
                &s(&model.data),
                &s(&pred),
                model.keras_layers,
                if model.standardize { "1" } else { "0" },
            ],
        ) else {
            nn_train::test_skip::skipped(
                &format!("loading the {name} .keras and .weights.h5 files in Keras"),
                "no python3",
            );
            return;
        };
        let result: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        eprintln!("keras {name}: {result}");
        let layers = result["layers"].to_string();
        assert_eq!(layers.contains("\"Normalization\""), model.standardize, "{layers}");
        assert_eq!(layers.contains("BatchNormalization"), name == "normalized", "{layers}");
        assert_eq!(layers.contains("Dropout"), name == "plain", "{layers}");
        assert_eq!(layers.contains("Rescaling"), name == "target", "{layers}");
        for key in ["keras", "weights"] {
            let diff = result[key].as_f64().unwrap();
            assert!(diff <= 1e-5, "{name}: Keras ({key}) differs from nn-predict by {diff}");
        }
    }
}

#[test]
fn bad_invocations_are_one_line_errors() {
    let m = models();
    let dir = tempfile::tempdir().unwrap();
    let ck = s(&m.plain.checkpoint);
    let one_line = |run: &Run, needle: &str| {
        assert!(!run.ok(), "should fail: {}", run.all());
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line expected:\n{}", run.stderr);
        assert!(lines[0].starts_with("nn-export: error: ") && lines[0].contains(needle), "{}", lines[0]);
    };
    let missing = dir.path().join("missing.h5");
    let out = dir.path().join("m.onnx");
    let run = direct("nn-export", &["--model", &s(&missing), "--out", &s(&out)], 30);
    one_line(&run, "no such file");
    let run = direct("nn-export", &["--model", &ck, "--out", &s(&dir.path().join("m.txt"))], 30);
    one_line(&run, "--format");
    let run = direct("nn-export", &["--model", &ck, "--format", "keras", "--out", &s(&dir.path().join("m.h5"))], 30);
    one_line(&run, "*.keras");
    let run = direct("nn-export", &["--model", &ck, "--format", "tflite", "--out", &s(&out)], 30);
    one_line(&run, "tflite");
    let run = direct("nn-export", &["--model", &ck, "--format", "onnx", "--out", &ck], 30);
    one_line(&run, "checkpoint itself");
    let run = direct("nn-export", &["--model", &ck, "--out", &s(&dir.path().join("no/such/folder/m.onnx"))], 30);
    one_line(&run, "does not exist");
    // Not a checkpoint: the data file.
    let run = direct("nn-export", &["--model", &s(&m.plain.data), "--out", &s(&out)], 30);
    one_line(&run, "checkpoint");
    // Nothing was left behind, not even temporary files.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // The checkpoint is untouched.
    assert!(nn_train::io::checkpoint::load(&m.plain.checkpoint).is_ok());
}
