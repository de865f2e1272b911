//! pvc-copy (not built yet).
