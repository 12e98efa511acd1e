//! The parts of the `kiln` host tool that read user input and need no host
//! state: the Kconfig engine and the Kraftfile reader. They are a library so
//! that the fuzz targets in `fuzz/` (and any other tool) can drive them the
//! same way `kiln` does.

pub mod kconfig;
pub mod kraftfile;
