//! ORCA's model: the pure decisions and vocabulary every other crate shares.
//!
//! No IO and no async runtime: everything here is a function of its arguments
//! (and, for [`time`], the clock), so it is unit-tested alone and used by the
//! control plane, the agent and the `orca` CLI alike. It sits beside `proto`
//! (the wire messages, which it reads without their gRPC services) and below
//! every other ORCA crate; nothing here may import from them.
//!
//! - [`quantity`]: Kubernetes resource quantities, exact.
//! - [`duration`]: Go-style durations (`90s`, `1h30m`, `250ms`), the one
//!   grammar of CLI flags, annotations and configuration.
//! - [`phase`]: pod phases and node states as words, in one place.
//! - [`fit`]: what a pod asks for and whether a node can take it.
//! - [`health`]: a silent node's health transitions.
//! - [`pod`]: names and keys of pods, and what a record says of itself.
//! - [`kind`]: the kinds of objects standalone mode keeps.
//! - [`labels`]: the node labels ORCA sets at launch.
//! - [`selection`]: the launch annotations and the instance-type choice.
//! - [`ledger`]: the provenance ledger of where each pod ran, and its cost.
//! - [`records`]: the CA, API token and store snapshot records.
//! - [`time`]: wire timestamps and kubectl-style ages.

pub mod duration;
pub mod fit;
pub mod health;
pub mod kind;
pub mod labels;
pub mod ledger;
pub mod phase;
pub mod pod;
pub mod quantity;
pub mod records;
pub mod selection;
pub mod time;
