//! Generates the Rust code of `latch/v1/latch.proto` (needs `protoc`: Debian `protobuf-compiler`,
//! or `PROTOC=/path/to/protoc`), plus the file descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=latch/v1/latch.proto");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("latch_v1_descriptor.bin"))
        .codec_path("crate::codec::LatchCodec")
        .compile_protos(&["latch/v1/latch.proto"], &["."])?;
    Ok(())
}
