//! One module per command group. Each command takes the [`Ctx`](crate::ctx::Ctx) and its own
//! arguments and returns how flow exits; the work itself is in the engine and stage crates.

pub mod check;
pub mod compare;
pub mod doctor;
pub mod maintain;
pub mod run;
pub mod status;
