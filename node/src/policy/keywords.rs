//! keywords: to be written.
