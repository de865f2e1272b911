//! pfsense-pull (not built yet).
