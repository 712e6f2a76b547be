//! Generates the Rust code of `latch/v1/latch.proto` (needs `protoc`: Debian `protobuf-compiler`,
//! or `PROTOC=/path/to/protoc`), plus the file descriptor set that server reflection serves.
//!
//! Clients and servers come from two tonic generators: the server side of the agent service's
//! `Subscribe` sends `crate::encoded::EncodedAgentMessage`, a message encoded once for every
//! stream it goes to, where its clients receive a plain `AgentMessage`.

use std::{env, path::PathBuf};

use tonic_prost_build::Config;

const CODEC: &str = "crate::codec::LatchCodec";

/// The service and method whose server side sends encoded messages, and the type it sends.
const ENCODED: (&str, &str, &str) = (
    "AgentService",
    "Subscribe",
    "crate::encoded::EncodedAgentMessage",
);

/// Clients as the proto says; servers with [`ENCODED`] in place of its message type.
struct Services {
    clients: Box<dyn prost_build::ServiceGenerator>,
    servers: Box<dyn prost_build::ServiceGenerator>,
    replaced: bool,
}

impl prost_build::ServiceGenerator for Services {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        self.clients.generate(service.clone(), buf);
        let mut service = service;
        if service.proto_name == ENCODED.0 {
            for m in &mut service.methods {
                if m.proto_name == ENCODED.1 {
                    assert!(
                        m.server_streaming && m.output_proto_type == ".latch.v1.AgentMessage",
                        "{}.{} no longer streams AgentMessage: change ENCODED in build.rs",
                        ENCODED.0,
                        ENCODED.1
                    );
                    m.output_type = ENCODED.2.to_string();
                    self.replaced = true;
                }
            }
        }
        self.servers.generate(service, buf);
    }

    fn finalize(&mut self, buf: &mut String) {
        self.clients.finalize(buf);
        self.servers.finalize(buf);
    }

    // Once the package is generated (`finalize` comes once per file, imported ones first).
    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        assert!(
            package != "latch.v1" || self.replaced,
            "no method {}.{} in latch.v1: change ENCODED in build.rs",
            ENCODED.0,
            ENCODED.1
        );
        self.clients.finalize_package(package, buf);
        self.servers.finalize_package(package, buf);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=latch/v1/latch.proto");
    let generator = || tonic_prost_build::configure().codec_path(CODEC);
    let mut config = Config::new();
    config
        .file_descriptor_set_path(out.join("latch_v1_descriptor.bin"))
        .service_generator(Box::new(Services {
            clients: generator().build_server(false).service_generator(),
            servers: generator().build_client(false).service_generator(),
            replaced: false,
        }));
    config.compile_protos(&["latch/v1/latch.proto"], &["."])?;
    Ok(())
}
