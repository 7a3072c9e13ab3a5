//! flashstream-loader (see ARCHITECTURE.md).
