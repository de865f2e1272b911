//! nfs-mirror (not built yet).
