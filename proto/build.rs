//! Generates the tonic/prost code for `proto/weir.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/weir.proto");
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&["proto/weir.proto"], &["proto"])?;
    Ok(())
}
