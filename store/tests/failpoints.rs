//! The store's failpoint cases (`herald_store::testsuite::failpoints`) on every backend.
//!
//! In a test binary of their own (`required-features = ["failpoints"]`): a configured failpoint
//! is process-wide and would hit the backend suite's tests, which run in the library's test
//! binary. The cases take turns among themselves (`testsuite::failpoints::Scenario`).

use std::sync::Arc;

use herald_store::Store;
use herald_store::embedded::EmbeddedStore;
use herald_store::testsuite::redis_store;

herald_store::failpoint_suite!(on_redis, async {
    let (server, store) = redis_store(Default::default()).await;
    (server, Arc::new(store) as Arc<dyn Store>)
});

herald_store::failpoint_suite!(on_memory, async {
    let store = EmbeddedStore::open(None).expect("open");
    ((), Arc::new(store) as Arc<dyn Store>)
});

herald_store::failpoint_suite!(on_disk, async {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(Some(dir.path())).expect("open");
    (dir, Arc::new(store) as Arc<dyn Store>)
});
