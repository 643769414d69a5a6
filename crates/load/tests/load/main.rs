//! The load generator against a fake shop over real HTTP: the preparation, the open-loop
//! schedule's counts and latencies on a slow shop, errors by status and by kind, and the
//! commands' JSON and `.hgrm` output. The schedule's exact timing is tested with a paused clock
//! in the crate's unit tests; here the clock is the wall's, so the bounds are generous.

mod commands;
mod fake_shop;
mod prepare;
mod schedule;
