//! The instance types ORCA may launch, as DescribeInstanceTypes describes them,
//! with their prices, and whether one fits a pod.

use std::fmt;

/// A CPU architecture as EC2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// `x86_64` (an image's `amd64`).
    X86_64,
    /// `arm64`.
    Arm64,
}

impl Arch {
    /// From EC2's (`x86_64`, `arm64`) or an OCI image's (`amd64`, `arm64`) name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "x86_64" | "amd64" => Some(Self::X86_64),
            "arm64" | "aarch64" => Some(Self::Arm64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X86_64 => "x86_64",
            Self::Arm64 => "arm64",
        })
    }
}

/// One instance type.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceType {
    /// `g5.xlarge`.
    pub name: String,
    /// Default vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// GPUs (0 for none).
    pub gpus: u32,
    /// GPU manufacturer (`NVIDIA`), empty without GPUs.
    pub gpu_manufacturer: String,
    /// GPU model as EC2 names it (`A10G`, `A100`, `H100`), empty without GPUs.
    pub gpu_model: String,
    /// Memory of one GPU, MiB.
    pub gpu_memory_mib: u64,
    /// Architectures it runs.
    pub architectures: Vec<Arch>,
    /// On-demand price, USD per hour, when known.
    pub on_demand_usd_per_hour: Option<f64>,
    /// Latest spot price, USD per hour, when known.
    pub spot_usd_per_hour: Option<f64>,
}

/// What a pod needs from an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// CPU, millicores.
    pub cpu_millis: u64,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// GPUs.
    pub gpus: u32,
    /// A GPU model, matched case-insensitively (`A100`).
    pub gpu_model: Option<String>,
    /// Architectures the pod's images run on; empty when unknown (any).
    pub architectures: Vec<Arch>,
}

impl InstanceType {
    /// Why it cannot run a pod with `needs`; `None` when it fits.
    pub fn unfit(&self, needs: &Needs) -> Option<String> {
        let cpu = u64::from(self.vcpus) * 1000;
        if needs.cpu_millis > cpu {
            return Some(format!(
                "{} has {} vCPUs; the pod requests {}m",
                self.name, self.vcpus, needs.cpu_millis
            ));
        }
        let memory = self.memory_mib * 1024 * 1024;
        if needs.memory_bytes > memory {
            return Some(format!(
                "{} has {} MiB of memory; the pod requests {} MiB",
                self.name,
                self.memory_mib,
                needs.memory_bytes.div_ceil(1024 * 1024)
            ));
        }
        if needs.gpus > self.gpus {
            return Some(format!(
                "{} has {} GPUs; the pod requests {}",
                self.name, self.gpus, needs.gpus
            ));
        }
        if let Some(model) = &needs.gpu_model
            && !self.gpu_model.eq_ignore_ascii_case(model)
        {
            return Some(if self.gpus == 0 {
                format!("{} has no GPU; the pod asks for {model}", self.name)
            } else {
                format!(
                    "{} has {} GPUs; the pod asks for {model}",
                    self.name, self.gpu_model
                )
            });
        }
        if !needs.architectures.is_empty()
            && !needs
                .architectures
                .iter()
                .any(|a| self.architectures.contains(a))
        {
            let want: Vec<String> = needs.architectures.iter().map(Arch::to_string).collect();
            let has: Vec<String> = self.architectures.iter().map(Arch::to_string).collect();
            return Some(format!(
                "{} runs {}; the pod's images are for {}",
                self.name,
                has.join(", "),
                want.join(", ")
            ));
        }
        None
    }

    /// The price that ranks it: spot or on-demand.
    pub fn price(&self, spot: bool) -> Option<f64> {
        if spot {
            self.spot_usd_per_hour.or(self.on_demand_usd_per_hour)
        } else {
            self.on_demand_usd_per_hour
        }
    }
}

/// Every instance type known, by name.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    types: Vec<InstanceType>,
}

impl Catalogue {
    /// A catalogue of `types`.
    pub fn new(mut types: Vec<InstanceType>) -> Self {
        types.sort_by(|a, b| a.name.cmp(&b.name));
        types.dedup_by(|a, b| a.name == b.name);
        Self { types }
    }

    /// One type by name.
    pub fn get(&self, name: &str) -> Option<&InstanceType> {
        self.types
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.types[i])
    }

    /// Every type, by name.
    pub fn iter(&self) -> impl Iterator<Item = &InstanceType> {
        self.types.iter()
    }

    /// How many types.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A few real types (figures from EC2's instance type pages), with prices.
    pub fn catalogue() -> Catalogue {
        let t = |name: &str, vcpus, mem_gib: u64, gpus, model: &str, arch, od: f64, spot: f64| {
            InstanceType {
                name: name.into(),
                vcpus,
                memory_mib: mem_gib * 1024,
                gpus,
                gpu_manufacturer: if gpus > 0 {
                    "NVIDIA".into()
                } else {
                    String::new()
                },
                gpu_model: model.into(),
                gpu_memory_mib: if gpus > 0 { 24 * 1024 } else { 0 },
                architectures: vec![arch],
                on_demand_usd_per_hour: Some(od),
                spot_usd_per_hour: Some(spot),
            }
        };
        Catalogue::new(vec![
            t("m5.large", 2, 8, 0, "", Arch::X86_64, 0.096, 0.035),
            t("c7g.large", 2, 4, 0, "", Arch::Arm64, 0.0725, 0.03),
            t("g5.xlarge", 4, 16, 1, "A10G", Arch::X86_64, 1.006, 0.45),
            t("g5.2xlarge", 8, 32, 1, "A10G", Arch::X86_64, 1.212, 0.40),
            t("g5.12xlarge", 48, 192, 4, "A10G", Arch::X86_64, 5.672, 2.1),
            t("g4dn.xlarge", 4, 16, 1, "T4", Arch::X86_64, 0.526, 0.22),
            t("g5g.xlarge", 4, 8, 1, "T4g", Arch::Arm64, 0.42, 0.18),
            t(
                "p4d.24xlarge",
                96,
                1152,
                8,
                "A100",
                Arch::X86_64,
                32.773,
                12.0,
            ),
        ])
    }

    #[test]
    fn fit_names_what_is_short() {
        let c = catalogue();
        let g5 = c.get("g5.xlarge").unwrap();
        let needs = |cpu, mem_mib: u64, gpus| Needs {
            cpu_millis: cpu,
            memory_bytes: mem_mib * 1024 * 1024,
            gpus,
            ..Default::default()
        };
        assert_eq!(g5.unfit(&needs(4000, 16384, 1)), None);
        assert!(g5.unfit(&needs(4001, 1, 0)).unwrap().contains("4 vCPUs"));
        assert!(g5.unfit(&needs(1, 16385, 0)).unwrap().contains("16384 MiB"));
        assert!(g5.unfit(&needs(1, 1, 2)).unwrap().contains("1 GPUs"));
        let a100 = Needs {
            gpu_model: Some("a100".into()),
            ..needs(1, 1, 1)
        };
        assert!(
            g5.unfit(&a100)
                .unwrap()
                .contains("A10G GPUs; the pod asks for a100")
        );
        assert_eq!(c.get("p4d.24xlarge").unwrap().unfit(&a100), None);
        let arm = Needs {
            architectures: vec![Arch::Arm64],
            ..needs(1, 1, 0)
        };
        assert!(g5.unfit(&arm).unwrap().contains("runs x86_64"));
        assert_eq!(c.get("c7g.large").unwrap().unfit(&arm), None);
        assert!(c.get("m5.large").unwrap().unfit(&needs(1, 1, 1)).is_some());
    }

    #[test]
    fn architectures_parse_from_ec2_and_oci_names() {
        assert_eq!(Arch::parse("amd64"), Some(Arch::X86_64));
        assert_eq!(Arch::parse("x86_64"), Some(Arch::X86_64));
        assert_eq!(Arch::parse("arm64"), Some(Arch::Arm64));
        assert_eq!(Arch::parse("s390x"), None);
    }
}
