# ORCA's agent AMI: Debian 12's official AMI, containerd + runc, the orca-agent
# binaries and their systemd unit; with `gpu = true`, NVIDIA's open kernel
# driver, the container toolkit and CDI spec generation at boot.
#
# Validates and builds with Debian's packer 1.6.6, where amazon-ebs is built in.
# Packer >= 1.10 needs the plugin declared: copy plugins.pkr.hcl.example to
# plugins.pkr.hcl next to this file and run `packer init .` first (1.6.6 rejects
# that block, so it is not part of the template).
#
#   cargo build --release -p orca-agent
#   packer build -var region=eu-west-1 -var gpu=true ami/
#
# IMDS: the control plane launches every instance of this AMI with IMDSv2
# required and a hop limit of 1 (RunInstances' MetadataOptions). Packer 1.6.6
# has neither `metadata_options` nor `imds_support`; with Packer >= 1.10 add
# `imds_support = "v2.0"` to the source to register the AMI as IMDSv2-only too.

variable "region" {
  type        = string
  description = "AWS region to bake in (the AMI lives there)."
  default     = "us-east-1"
}

variable "base_ami_name" {
  type        = string
  description = "Name filter of the base AMI: Debian 12's official images."
  default     = "debian-12-amd64-*"
}

variable "base_ami_owner" {
  type        = string
  description = "Account that publishes the base AMI (136693071363: Debian)."
  default     = "136693071363"
}

variable "instance_type" {
  type        = string
  description = "Instance type the bake runs on (a GPU type is not needed for the GPU variant)."
  default     = "m6i.large"
}

variable "gpu" {
  type        = bool
  description = "Install NVIDIA's driver, the container toolkit and CDI generation at boot."
  default     = false
}

variable "agent_version" {
  type        = string
  description = "Version recorded in the AMI's name and tags; the binaries come from agent_dir."
  default     = "0.1.0"
}

variable "agent_dir" {
  type        = string
  description = "Directory holding orca-agent, orca-logger and orca-pause (release build)."
  default     = "target/release"
}

variable "volume_size_gb" {
  type        = number
  description = "Root volume size; images and the GPU driver need room."
  default     = 30
}

locals {
  variant   = var.gpu ? "gpu" : "cpu"
  timestamp = formatdate("YYYYMMDDhhmmss", timestamp())
}

source "amazon-ebs" "orca_agent" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = "admin"
  ami_name      = "orca-agent-${var.agent_version}-${local.variant}-${local.timestamp}"
  ena_support   = true

  source_ami_filter {
    filters = {
      name                = var.base_ami_name
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = [var.base_ami_owner]
    most_recent = true
  }

  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = var.volume_size_gb
    volume_type           = "gp3"
    throughput            = 125
    iops                  = 3000
    delete_on_termination = true
  }

  tags = {
    Name                   = "orca-agent-${var.agent_version}-${local.variant}"
    "orca.research/agent"   = var.agent_version
    "orca.research/variant" = local.variant
  }
}

build {
  sources = ["source.amazon-ebs.orca_agent"]

  provisioner "shell" {
    inline = ["mkdir -p /tmp/orca-ami"]
  }

  provisioner "file" {
    sources = [
      "${var.agent_dir}/orca-agent",
      "${var.agent_dir}/orca-logger",
      "${var.agent_dir}/orca-pause",
    ]
    destination = "/tmp/orca-ami/"
  }

  provisioner "file" {
    source      = "${path.root}/files"
    destination = "/tmp/orca-ami"
  }

  # The same scripts CI runs in a debootstrapped Debian 12 (tests/tests/ami_provision.rs).
  provisioner "shell" {
    execute_command = "sudo -E bash '{{ .Path }}'"
    environment_vars = [
      "ORCA_AMI_STAGING=/tmp/orca-ami",
      "ORCA_AMI_GPU=${var.gpu}",
      "DEBIAN_FRONTEND=noninteractive",
    ]
    scripts = [
      "${path.root}/scripts/10-base.sh",
      "${path.root}/scripts/20-gpu.sh",
      "${path.root}/scripts/30-agent.sh",
      "${path.root}/scripts/90-cleanup.sh",
    ]
  }
}
