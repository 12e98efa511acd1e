//! `kiln pkg`: an app's image in the form a deployment takes, one module
//! per format behind [`Package`] (what every format packs).
//!
//! - [`oci`]: an OCI image for urunc (Kubernetes and other container
//!   engines that boot unikernels);
//! - [`libvirt`]: a libvirt domain booting a copy of the kernel;
//! - [`disk`]: a bootable disk image (BIOS and UEFI) in the formats
//!   hypervisors and clouds import.

pub mod disk;
pub mod libvirt;
pub mod oci;

use std::path::Path;

/// What goes into a package.
pub struct Package<'a> {
    /// The image's name (the app's, or `--name`), and its tag.
    pub name: &'a str,
    pub tag: &'a str,
    pub kernel: &'a Path,
    pub arch: &'a str,
    /// The VMM the deployment boots it with (qemu, firecracker, cloud-hypervisor).
    pub hypervisor: &'a str,
    /// The app's arguments and environment.
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    /// A separate initrd (a packed cpio), for formats that carry one (OCI).
    pub initrd: Option<&'a Path>,
}
