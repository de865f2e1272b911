//! sqlite-dump (not built yet).
