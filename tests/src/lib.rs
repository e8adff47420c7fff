//! The tests of how llm-tower's layers compose.
//!
//! Each layer has its own tests in `crates/llm-tower/tests`, against scripted
//! services and the mock provider. The defects that remain sit where layers
//! meet: a timeout that one layer counts and another never hears of, a
//! stream event that one layer reads as a token and another as noise. The
//! integration tests of this crate (`tests/tests/*.rs`) drive the whole
//! recommended stack, and its documented reorderings, over loopback against
//! the in-process mock provider (`llm-tower-mock`), with tokio's time paused,
//! and assert only what can be observed from outside: the mock's journal,
//! the caller's body and its errors' source chains, usage reports and
//! circuit breaker states.
//!
//! The library itself has nothing here; this crate is not published.
