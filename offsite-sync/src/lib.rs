//! offsite-sync (not built yet).
