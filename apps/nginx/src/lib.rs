//! Debian's nginx as a unikernel: the ELF loader runs the program the
//! Kraftfile's `cmd` names; `programs:` packs nginx and its libraries from
//! this machine into the image, next to the configuration and site in
//! `rootfs/`. An app of this shape runs any Linux program: copy the folder,
//! change `programs:`, `cmd:` and the rootfs.
#![no_std]

pub fn main(args: &[&str], env: &[(&str, &str)]) -> i32 {
    elfloader::main(args, env)
}
