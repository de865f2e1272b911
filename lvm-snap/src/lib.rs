//! lvm-snap (not built yet).
