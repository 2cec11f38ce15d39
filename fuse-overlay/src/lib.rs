//! Layered container filesystem: read-only image layers plus a per-container writable
//! layer. Not implemented yet (issue "fuse-overlay"); the crate exists so the workspace
//! layout matches the design.
