//! flashstream-scheduler (see ARCHITECTURE.md).
