//! What inventory did for one order: its reservation (or rejection) and how it ended.

mod aggregate;
mod commands;
mod error;

pub use aggregate::{Allocation, AllocationStatus};
pub use commands::AllocationCommand;
pub use error::AllocationError;
