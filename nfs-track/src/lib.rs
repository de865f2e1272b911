//! nfs-track (not built yet).
