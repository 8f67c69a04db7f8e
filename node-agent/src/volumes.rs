//! Pod volumes on the host and their mounts into containers.
