//! The kernel as a Linux process (`kiln run --plat linuxu`): the same
//! libraries and app, built for the same bare-metal target as the VM
//! kernel, with host system calls as the platform.
//!
//! The contract with whoever starts the executable (`kiln run`, or a user
//! at a shell, in gdb or under perf):
//! - **Command line**: the arguments, each quoted as `kiln run` quotes
//!   words ([`kiln_boot::cmdline::quote`]'s rules), joined by blanks, are
//!   the kernel command line (`netdev.ip=... env.K=V -- app args`).
//!   `clock.epoch=` defaults to the host's wall clock.
//! - **Memory**: one anonymous mapping of `linuxu.mem=MIB` MiB (64 by
//!   default) is the heap; nothing else is taken from the host.
//! - **Console**: standard output.
//! - **Time**: CLOCK_MONOTONIC in nanoseconds ([`Platform::ticks`] at 1 GHz).
//! - **Network**: the tap device `linuxu.tap=NAME` (`kiln run` makes it
//!   with an address on the host's side; a root process given a name
//!   that does not exist gets a new tap, without addresses), with the MAC address
//!   `linuxu.mac=` (52:54:00:12:34:56 by default); frames go through
//!   lib/net's smoltcp, exactly as from a virtio-net device. A tap, not
//!   the host's sockets: the process then runs the network code the VM
//!   runs, which is what a host build is for (debugging and profiling
//!   Kiln itself), and it gets an address of its own.
//! - **Stopping**: SIGTERM, SIGINT and SIGHUP are blocked and read as the
//!   host's request to stop ([`kiln_boot::poll_stop`]), so `kiln stop` and
//!   Ctrl-C end the app the way they do in a VM.
//! - **Exit**: the app's code is the process's exit status; a fault
//!   (SIGSEGV, SIGBUS, SIGILL, SIGFPE) prints what faulted and a backtrace
//!   and exits with [`kiln_boot::EXIT_FAULT`].
//!
//! There are no virtio devices, so volumes and the ELF loader (which needs
//! page tables) stay VM-only; Kconfig keeps them out.
#![cfg_attr(not(test), no_std)]
// The entry and the system calls exist only in the bare-metal build that
// becomes the executable; host builds are for unit tests.
#![cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]

mod args;
#[cfg(target_arch = "x86_64")]
mod sys;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
mod host;
