//! Where standalone objects are stored, and whether a namespace exists: a
//! leaf that [`crate::claims`] reads too.

use orca_model::kind::Kind;
use orca_store::Store;

use crate::shared::ClusterError;

/// The `objects` table key of an object.
pub(crate) fn key(kind: Kind, ns: &str, name: &str) -> String {
    format!("{}/{ns}/{name}", kind.name())
}

/// Whether namespace `ns` exists (`default` always does).
pub fn namespace_exists(store: &Store, ns: &str) -> Result<bool, ClusterError> {
    Ok(ns == orca_model::pod::DEFAULT_NAMESPACE
        || store.objects.get(&key(Kind::Namespace, "", ns))?.is_some())
}
