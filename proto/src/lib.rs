//! Latch's gRPC contract: `latch/v1/latch.proto`, compiled with tonic.
//!
//! This crate owns the wire types and the generated clients and servers of the two services of
//! `latch-central`: [`v1::agent_service_client`] / [`v1::agent_service_server`] (hosts) and
//! [`v1::reviewer_service_client`] / [`v1::reviewer_service_server`] (reviewers, admins, tools),
//! plus [`FILE_DESCRIPTOR_SET`] for server reflection, the codec both use ([`codec`]) and a
//! message encoded once for the many streams a server sends it on ([`encoded`]).
//!
//! It must not hold behaviour: validation, storage and policy live in the crates that use it.
//! The one exception is how a destination is written for people ([`v1::Destination::shown`]),
//! so that every channel writes it alike.

pub mod codec;
pub mod encoded;

/// Package `latch.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("latch.v1");
}

/// The encoded `FileDescriptorSet` of `latch.v1`, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("latch_v1_descriptor");

impl v1::Destination {
    /// As people read it: `name (address:port/protocol)` when the workload resolved a name to
    /// the address, else `address:port/protocol`; an IPv6 address in brackets.
    pub fn shown(&self) -> String {
        let at = if self.address.contains(':') {
            format!("[{}]:{}/{}", self.address, self.port, self.protocol)
        } else {
            format!("{}:{}/{}", self.address, self.port, self.protocol)
        };
        if self.host_name.is_empty() {
            at
        } else {
            format!("{} ({at})", self.host_name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::Destination;

    #[test]
    fn a_destination_reads_with_its_name_when_known() {
        let d = |address: &str, host_name: &str| Destination {
            family: String::new(),
            address: address.into(),
            port: 443,
            protocol: "tcp".into(),
            host_name: host_name.into(),
            by_name: false,
            new_name: false,
        };
        let cases = [
            (d("52.216.1.12", ""), "52.216.1.12:443/tcp"),
            (d("2001:db8::1", ""), "[2001:db8::1]:443/tcp"),
            (
                d("52.216.1.12", "upload.example.com"),
                "upload.example.com (52.216.1.12:443/tcp)",
            ),
        ];
        for (dest, want) in cases {
            assert_eq!(dest.shown(), want);
        }
    }
}
