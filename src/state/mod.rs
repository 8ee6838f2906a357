pub mod bitset;
pub mod bloom;
pub mod canonical;
pub mod embedded;
pub mod formats;
pub mod live;
pub mod snapshot;
pub mod sorted_json;
