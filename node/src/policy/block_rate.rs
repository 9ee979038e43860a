//! block_rate: to be written.
