//! Injectable time.
