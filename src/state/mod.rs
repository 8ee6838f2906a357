pub mod bitset;
pub mod bloom;
pub mod formats;
pub mod snapshot;
pub mod embedded;
pub mod live;
