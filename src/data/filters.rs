//! HDF5 compression filters: the decoders nn-train registers itself, and a check that every
//! filter of a dataset's pipeline is available before it is read.
//!
//! Where each filter h5py and hdf5plugin write comes from (Debian 12):
//! - gzip (deflate), shuffle, fletcher32, szip, nbit, scale-offset: built into libhdf5.
//! - LZF (32000): the hdf5 crate's built-in filter (cargo feature `lzf`); Debian's
//!   `hdf5-plugin-lzf` 3.7.0-8 fails to load (undefined symbol `lzf_decompress`).
//! - Blosc (32001): the Debian package `hdf5-filter-plugin-blosc-serial`.
//! - LZ4 (32004), BZip2 (307): the Debian package `hdf5-filter-plugin`.
//! - Bitshuffle (32008) and Zstd (32015): no Debian package provides them (despite its
//!   description, `hdf5-filter-plugin` ships no Bitshuffle), so this module registers
//!   decoders for both (decode only: nn-train never writes them).
//!
//! Registered filters take precedence over plugins, so a user's `HDF5_PLUGIN_PATH` cannot
//! swap in another decoder for these two.

use crate::{Error, Result};
use hdf5_sys::h5p::{H5Pget_filter2, H5Pget_nfilters};
use hdf5_sys::h5z::{H5Z_class2_t, H5Z_filter_t, H5Zfilter_avail, H5Zregister, H5Z_CLASS_T_VERS, H5Z_FLAG_REVERSE};
use std::ffi::{c_char, c_uint, c_void, CStr};
use std::path::Path;
use std::sync::Once;

/// HDF5's registered id of the Bitshuffle filter.
pub const BITSHUFFLE_ID: H5Z_filter_t = 32008;
/// HDF5's registered id of the Zstandard filter.
pub const ZSTD_ID: H5Z_filter_t = 32015;

/// Registers the Bitshuffle and Zstd decoders with the HDF5 library (once per process).
/// Called before any data file is opened.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (id, name, filter) in [
            (BITSHUFFLE_ID, c"bitshuffle (nn-train decoder)", bitshuffle_filter as FilterFn),
            (ZSTD_ID, c"zstd (nn-train decoder)", zstd_filter as FilterFn),
        ] {
            let class = H5Z_class2_t {
                version: H5Z_CLASS_T_VERS as _,
                id,
                encoder_present: 0,
                decoder_present: 1,
                name: name.as_ptr(),
                can_apply: None,
                set_local: None,
                filter: Some(filter),
            };
            // SAFETY: `class` is a valid H5Z_class2_t; HDF5 copies it into its filter table,
            // and the name it points to is a 'static C string. The hdf5 crate's lock
            // serializes this call with every other HDF5 call of the process.
            let status = hdf5::sync::sync(|| unsafe { H5Zregister((&class as *const H5Z_class2_t).cast()) });
            // A failure leaves the filter unavailable; `check_available` then says so.
            let _ = status;
        }
    });
}

/// A chunk decoder: (stored bytes, the filter's client data) -> decoded bytes or why not.
type Decoder = fn(&[u8], &[c_uint]) -> std::result::Result<Vec<u8>, String>;

type FilterFn = unsafe extern "C" fn(c_uint, usize, *const c_uint, usize, *mut usize, *mut *mut c_void) -> usize;

/// One filter of a dataset's pipeline, as the file names it.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterUse {
    /// HDF5's filter id.
    pub id: H5Z_filter_t,
    /// The name stored in the file (e.g. "lzf"), empty when none.
    pub name: String,
}

/// The filters of `ds`'s pipeline, in order.
pub fn pipeline(ds: &hdf5::Dataset) -> hdf5::Result<Vec<FilterUse>> {
    let dcpl = ds.dcpl()?;
    let id = dcpl.id();
    hdf5::sync::sync(|| {
        // SAFETY: `id` is a live dataset creation property list (held by `dcpl`).
        let n = unsafe { H5Pget_nfilters(id) };
        let mut out = Vec::new();
        for i in 0..n.max(0) as c_uint {
            let mut flags: c_uint = 0;
            let mut nelmts: usize = 0;
            let mut config: c_uint = 0;
            let mut name = [0 as c_char; 256];
            // SAFETY: nelmts = 0 asks for no client data (cd_values may then be null); `name`
            // has room for the 256 bytes we say it has, and HDF5 NUL-terminates it.
            let filter = unsafe {
                H5Pget_filter2(
                    id,
                    i,
                    &mut flags,
                    &mut nelmts,
                    std::ptr::null_mut(),
                    name.len(),
                    name.as_mut_ptr(),
                    &mut config,
                )
            };
            if filter < 0 {
                continue;
            }
            name[name.len() - 1] = 0;
            // SAFETY: `name` is NUL-terminated (set just above).
            let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
            out.push(FilterUse { id: filter, name });
        }
        Ok(out)
    })
}

/// What a filter is called and how a Debian machine gets it.
fn known(id: H5Z_filter_t) -> Option<(&'static str, &'static str)> {
    const PLUGIN: &str = "install the Debian package hdf5-filter-plugin (make deps does)";
    const BLOSC: &str = "install the Debian package hdf5-filter-plugin-blosc-serial (make deps does)";
    const BUILT_IN: &str = "it is built into nn-train, so its registration failed";
    Some(match id {
        1 => ("gzip (deflate)", "it is built into libhdf5"),
        4 => ("szip", "use a libhdf5 built with szip (Debian's is)"),
        307 => ("bzip2", PLUGIN),
        32000 => ("lzf", BUILT_IN),
        32001 => ("blosc", BLOSC),
        32004 => ("lz4", PLUGIN),
        32008 => ("bitshuffle", BUILT_IN),
        32013 => ("zfp", "install the Debian package hdf5-filter-plugin-zfp-serial"),
        32015 => ("zstd", BUILT_IN),
        32026 => ("blosc2", "no Debian package provides it; Python's hdf5plugin package ships its plugin"),
        _ => return None,
    })
}

/// Checks that every filter `ds` was written with can be decoded here; else a one-line error
/// naming the filter (id and name) and what provides it. Without this check HDF5 fails at
/// the first read with "can't open directory" and its plugin folder.
pub fn check_available(ds: &hdf5::Dataset, path: &Path, name: &str) -> Result<()> {
    register();
    let filters = pipeline(ds).map_err(|e| Error::data(path, format!("dataset '{name}': {e}")))?;
    for f in filters {
        // SAFETY: a plain query of the library's filter table (it may load a plugin).
        let avail = hdf5::sync::sync(|| unsafe { H5Zfilter_avail(f.id) });
        if avail > 0 {
            continue;
        }
        let stored = f.name.split(';').next().unwrap_or("").trim().to_string();
        let (what, remedy) = match known(f.id) {
            Some((n, remedy)) => (n.to_string(), remedy),
            None => {
                (if stored.is_empty() { "unknown".to_string() } else { stored }, "nn-train knows no package for it")
            }
        };
        return Err(Error::data(
            path,
            format!(
                "dataset '{name}' is compressed with the {what} filter (HDF5 filter id {}), which this machine lacks: {remedy}; or set HDF5_PLUGIN_PATH to a folder holding its plugin (e.g. python3 -c 'import hdf5plugin; print(hdf5plugin.PLUGIN_PATH)'), or rewrite the file without it (h5repack -f GZIP=4 IN OUT)",
                f.id
            ),
        ));
    }
    Ok(())
}

/// Runs `decode` on the chunk HDF5 hands a filter and replaces the chunk with the result;
/// returns the new size, or 0 (HDF5's failure value) on error or when asked to encode.
///
/// # Safety
/// The arguments must be those HDF5 passes to an H5Z_func_t.
unsafe fn run_decoder(
    flags: c_uint,
    cd_nelmts: usize,
    cd_values: *const c_uint,
    nbytes: usize,
    buf_size: *mut usize,
    buf: *mut *mut c_void,
    decode: Decoder,
) -> usize {
    if flags & H5Z_FLAG_REVERSE == 0 {
        return 0;
    }
    let cd: &[c_uint] = if cd_values.is_null() || cd_nelmts == 0 {
        &[]
    } else {
        // SAFETY: HDF5 passes cd_nelmts values at cd_values.
        unsafe { std::slice::from_raw_parts(cd_values, cd_nelmts) }
    };
    // SAFETY: *buf holds nbytes bytes of the stored chunk.
    let input = unsafe { std::slice::from_raw_parts(*buf as *const u8, nbytes) };
    let Ok(Ok(out)) = std::panic::catch_unwind(|| decode(input, cd)) else {
        return 0;
    };
    // SAFETY: HDF5 frees filter buffers with free() (H5MM_xfree), so the replacement comes
    // from malloc; we copy out.len() bytes into a block of at least that size.
    unsafe {
        let block = libc::malloc(out.len().max(1)) as *mut u8;
        if block.is_null() {
            return 0;
        }
        std::ptr::copy_nonoverlapping(out.as_ptr(), block, out.len());
        libc::free(*buf);
        *buf = block.cast();
        *buf_size = out.len();
    }
    out.len()
}

/// # Safety
/// Called by HDF5 as an H5Z_func_t.
unsafe extern "C" fn zstd_filter(
    flags: c_uint,
    cd_nelmts: usize,
    cd_values: *const c_uint,
    nbytes: usize,
    buf_size: *mut usize,
    buf: *mut *mut c_void,
) -> usize {
    // SAFETY: our arguments are HDF5's, passed on unchanged.
    unsafe { run_decoder(flags, cd_nelmts, cd_values, nbytes, buf_size, buf, |i, _| zstd_decode(i)) }
}

/// # Safety
/// Called by HDF5 as an H5Z_func_t.
unsafe extern "C" fn bitshuffle_filter(
    flags: c_uint,
    cd_nelmts: usize,
    cd_values: *const c_uint,
    nbytes: usize,
    buf_size: *mut usize,
    buf: *mut *mut c_void,
) -> usize {
    // SAFETY: our arguments are HDF5's, passed on unchanged.
    unsafe { run_decoder(flags, cd_nelmts, cd_values, nbytes, buf_size, buf, bitshuffle_decode) }
}

/// The Zstd filter's chunk: one or more Zstandard frames.
fn zstd_decode(input: &[u8]) -> std::result::Result<Vec<u8>, String> {
    zstd::stream::decode_all(input).map_err(|e| e.to_string())
}

/// Bitshuffle's compression codes (client data value 4).
const BSHUF_NONE: c_uint = 0;
const BSHUF_LZ4: c_uint = 2;
const BSHUF_ZSTD: c_uint = 3;

fn be32(b: &[u8], at: usize) -> std::result::Result<usize, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
        .ok_or_else(|| "truncated chunk".to_string())
}

/// Decodes a Bitshuffle chunk (the format of github.com/kiyo-masui/bitshuffle's HDF5 filter).
///
/// Client data: [major, minor, element size, block size in elements (0: default), compression
/// (0 none, 2 LZ4, 3 Zstd), ...]. Compressed chunks start with the decoded size (u64, big
/// endian) and the block size in bytes (u32); each block is then a u32 compressed size and
/// the compressed bytes. Blocks hold `block` elements, the last whole block a multiple of 8
/// elements, and the last (n mod 8) elements are stored as they are.
fn bitshuffle_decode(input: &[u8], cd: &[c_uint]) -> std::result::Result<Vec<u8>, String> {
    let elem = *cd.get(2).ok_or("bitshuffle: no element size in the filter's parameters")? as usize;
    let codec = cd.get(4).copied().unwrap_or(BSHUF_NONE);
    if elem == 0 {
        return Err("bitshuffle: element size 0".into());
    }
    let (total, mut block, body) = match codec {
        BSHUF_LZ4 | BSHUF_ZSTD => {
            let hi = be32(input, 0)? as u64;
            let lo = be32(input, 4)? as u64;
            ((hi << 32 | lo) as usize, be32(input, 8)? / elem, &input[12..])
        }
        BSHUF_NONE => (input.len(), cd.get(3).copied().unwrap_or(0) as usize, input),
        other => return Err(format!("bitshuffle: unknown compression {other}")),
    };
    if total % elem != 0 {
        return Err("bitshuffle: size is not a whole number of elements".into());
    }
    if block == 0 {
        // bshuf_default_block_size: about 8 KiB, a multiple of 8 elements, at least 128.
        block = (8192 / elem / 8 * 8).max(128);
    }
    if block % 8 != 0 {
        return Err("bitshuffle: block size is not a multiple of 8".into());
    }
    let n = total / elem;
    let mut out = vec![0u8; total];
    let mut blocks: Vec<(usize, usize)> = (0..n / block).map(|b| (b * block, block)).collect();
    let last = n % block - n % block % 8;
    if last > 0 {
        blocks.push((n / block * block, last));
    }
    let mut pos = 0;
    let mut tmp = Vec::new();
    for (start, count) in blocks {
        let bytes = count * elem;
        let dest = &mut out[start * elem..start * elem + bytes];
        if codec == BSHUF_NONE {
            let src = body.get(pos..pos + bytes).ok_or("bitshuffle: truncated chunk")?;
            unshuffle_bits(src, dest, count, elem);
            pos += bytes;
            continue;
        }
        let csize = be32(body, pos)?;
        let src = body.get(pos + 4..pos + 4 + csize).ok_or("bitshuffle: truncated chunk")?;
        pos += 4 + csize;
        tmp.resize(bytes, 0);
        let got = if codec == BSHUF_LZ4 {
            lz4_flex::block::decompress_into(src, &mut tmp).map_err(|e| format!("bitshuffle lz4: {e}"))?
        } else {
            zstd::bulk::decompress_to_buffer(src, &mut tmp[..]).map_err(|e| format!("bitshuffle zstd: {e}"))?
        };
        if got != bytes {
            return Err(format!("bitshuffle: a block decoded to {got} bytes, expected {bytes}"));
        }
        unshuffle_bits(&tmp, dest, count, elem);
    }
    let rest = n % 8 * elem;
    let src = body.get(pos..pos + rest).ok_or("bitshuffle: truncated chunk")?;
    out[total - rest..].copy_from_slice(src);
    Ok(out)
}

/// Inverse of Bitshuffle's bit transpose of `n` elements (n a multiple of 8) of `elem` bytes:
/// `src` holds 8*elem rows of n bits, row k = bit k%8 of byte k/8 of every element, element
/// i at bit i%8 of byte i/8.
fn unshuffle_bits(src: &[u8], dest: &mut [u8], n: usize, elem: usize) {
    let row = n / 8;
    for j in 0..elem {
        for col in 0..row {
            // An 8x8 bit transpose: row b's byte `col` holds bit b of elements col*8..col*8+8.
            let mut bytes = [0u8; 8];
            for b in 0..8 {
                let r = src[(j * 8 + b) * row + col];
                for (m, out) in bytes.iter_mut().enumerate() {
                    *out |= ((r >> m) & 1) << b;
                }
            }
            for (m, &v) in bytes.iter().enumerate() {
                dest[(col * 8 + m) * elem + j] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bitshuffle's forward transform, written from its definition.
    fn shuffle_bits(src: &[u8], n: usize, elem: usize) -> Vec<u8> {
        let mut out = vec![0u8; n * elem];
        for i in 0..n {
            for k in 0..elem * 8 {
                let bit = (src[i * elem + k / 8] >> (k % 8)) & 1;
                let at = k * n + i;
                out[at / 8] |= bit << (at % 8);
            }
        }
        out
    }

    #[test]
    fn unshuffle_inverts_the_bit_transpose() {
        let (n, elem) = (24, 4);
        let data: Vec<u8> = (0..n * elem).map(|i| (i * 37 + 11) as u8).collect();
        let mut back = vec![0u8; n * elem];
        unshuffle_bits(&shuffle_bits(&data, n, elem), &mut back, n, elem);
        assert_eq!(back, data);
    }

    #[test]
    fn uncompressed_bitshuffle_chunks_keep_their_tail_elements() {
        // 21 elements of 2 bytes, block 8: two whole blocks, then 5 elements stored as is.
        let (elem, block) = (2usize, 8usize);
        let data: Vec<u8> = (0..21 * elem).map(|i| (i * 91 + 3) as u8).collect();
        let mut chunk = Vec::new();
        for b in 0..2 {
            chunk.extend(shuffle_bits(&data[b * block * elem..(b + 1) * block * elem], block, elem));
        }
        chunk.extend_from_slice(&data[16 * elem..]);
        assert_eq!(bitshuffle_decode(&chunk, &[0, 0, elem as u32, block as u32, 0]).unwrap(), data);
        // A chunk of part of an element, or an LZ4 chunk cut short, is an error, not a panic.
        assert!(bitshuffle_decode(&chunk[..9], &[0, 0, elem as u32, block as u32, 0]).is_err());
        let lz4 = [0, 0, 0, 0, 0, 0, 0, 42, 0, 0, 0, 16, 0, 0, 0, 9, 1, 2];
        assert!(bitshuffle_decode(&lz4, &[0, 0, elem as u32, block as u32, 2]).is_err());
    }
}
