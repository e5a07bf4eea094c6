//! Shared fixtures for the scenario tests in `tests/tests/`.
//!
//! Each part of the system under test gets its own module, so the fixtures
//! for one part can grow without tangling with another's.

pub mod apiserver;
pub mod browser;
pub mod fleet;
pub mod flood;
pub mod forged;
pub mod kubectl;
