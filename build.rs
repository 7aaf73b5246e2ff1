//! Generates the Rust declarations of oneDNN's C API (Debian's `libdnnl-dev`, header
//! `oneapi/dnnl/dnnl.h`) that `src/engine/onednn.rs` uses, and links libdnnl and the GNU
//! OpenMP runtime it runs on (whose `omp_set_num_threads` sets oneDNN's threads per rank).
//! Generated, not written by hand, because oneDNN 2.x passes its memory descriptors as large
//! C structs whose layout must match the installed header exactly.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let header = ["/usr/include/oneapi/dnnl/dnnl.h", "/usr/local/include/oneapi/dnnl/dnnl.h"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("oneDNN's header oneapi/dnnl/dnnl.h is missing: install Debian's libdnnl-dev (make deps does)")
        });
    println!("cargo:rerun-if-changed={header}");
    let bindings = bindgen::Builder::default()
        .header(header)
        .allowlist_function(
            "dnnl_(engine_create|engine_destroy|stream_create|stream_destroy|stream_wait|memory_desc_init_by_strides|memory_desc_init_by_tag|memory_desc_get_size|matmul_desc_init|primitive_attr_create|primitive_attr_destroy|primitive_attr_set_scratchpad_mode|primitive_desc_create|primitive_desc_destroy|primitive_desc_query|primitive_desc_query_md|primitive_create|primitive_destroy|primitive_execute|memory_create|memory_destroy|memory_set_data_handle|get_effective_cpu_isa|set_max_cpu_isa)",
        )
        .allowlist_var("DNNL_ARG_(SRC|WEIGHTS|BIAS|DST|SCRATCHPAD)")
        .allowlist_type("dnnl_stream_flags_t")
        .prepend_enum_name(false)
        .layout_tests(false)
        .generate()
        .expect("bindgen could not read oneDNN's header");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings.write_to_file(out.join("dnnl_sys.rs")).expect("cannot write the oneDNN bindings");
    println!("cargo:rustc-link-lib=dylib=dnnl");
    println!("cargo:rustc-link-lib=dylib=gomp");
}
