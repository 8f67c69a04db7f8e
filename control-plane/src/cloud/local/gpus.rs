//! Simulated GPUs: a host added with GPUs runs its agent with the fake GPU
//! source (the bundled recording, resized) and a CDI spec of its own, written
//! here, whose device nodes are aliases of `/dev/null` (`/dev/nvidia<i>` and
//! `/dev/nvidiactl` in the container). The agent's real CDI path applies it,
//! so a pod on a simulated GPU host sees exactly its own "GPU" device nodes.

use std::path::{Path, PathBuf};

/// Writes `<dir>/cdi/orca-simulated.yaml` for `count` GPUs; returns the CDI directory.
pub fn write_cdi_spec(dir: &Path, count: u32) -> std::io::Result<PathBuf> {
    let cdi = dir.join("cdi");
    std::fs::create_dir_all(&cdi)?;
    let mut yaml = String::from(
        "# Written by ORCA's local provider: simulated GPUs, /dev/null aliases.\n\
         cdiVersion: 0.5.0\n\
         kind: nvidia.com/gpu\n\
         containerEdits:\n  \
           env:\n  - ORCA_SIMULATED_GPUS=true\n  \
           deviceNodes:\n  - path: /dev/nvidiactl\n    hostPath: /dev/null\n\
         devices:\n",
    );
    for i in 0..count {
        yaml.push_str(&format!(
            "- name: \"{i}\"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia{i}\n      hostPath: /dev/null\n"
        ));
    }
    std::fs::write(cdi.join("orca-simulated.yaml"), yaml)?;
    Ok(cdi)
}
