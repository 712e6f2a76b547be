//! Latch's gRPC contract: `latch/v1/latch.proto`, compiled with tonic.
//!
//! This crate owns the wire types and the generated clients and servers of the two services of
//! `latch-central`: [`v1::agent_service_client`] / [`v1::agent_service_server`] (hosts) and
//! [`v1::reviewer_service_client`] / [`v1::reviewer_service_server`] (reviewers, admins, tools),
//! plus [`FILE_DESCRIPTOR_SET`] for server reflection.
//!
//! It must not hold behaviour: validation, storage and policy live in the crates that use it.

/// Package `latch.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("latch.v1");
}

/// The encoded `FileDescriptorSet` of `latch.v1`, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("latch_v1_descriptor");
