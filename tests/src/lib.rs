//! Integration tests live in tests/; see tests/all/main.rs.
