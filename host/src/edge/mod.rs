//! What a node offers the edge (issue 10: the same policies on Spin):
//! [`plan`] turns a configuration into the edge plan (`portcullis edge
//! plan`), [`manifest`] into the edge's `spin.toml` (`portcullis edge
//! manifest`). The node's other half, the audit collector the edge sends its
//! records to, is `crate::audit::collector`.

pub mod manifest;
pub mod plan;
