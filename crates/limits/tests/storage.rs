//! `limits.storage`: the backend and the settings of each store.

mod common;

use common::*;

#[test]
fn bad_storage_is_rejected() {
    assert_rejects(
        "storage:\n  backend: sled\n",
        "limits.storage.sled.path",
        "required when limits.storage.backend is sled",
    );
    assert_rejects(
        "storage:\n  backend: sqlite\n",
        "limits.storage.sqlite.path",
        "required when limits.storage.backend is sqlite",
    );
    // The sled section does not stand in for a missing sqlite path.
    assert_rejects(
        "storage:\n  backend: sqlite\n  sled:\n    path: /x\n",
        "limits.storage.sqlite.path",
        "required",
    );
    assert_rejects(
        "storage:\n  backend: sled\n  sled:\n    path: \"\"\n",
        "limits.storage.sled.path",
        "must not be empty",
    );
    assert_rejects(
        "storage:\n  backend: postgres\n",
        "limits.storage.backend",
        "expected one of: memory, sled, sqlite, redis",
    );
    assert_rejects(
        "storage:\n  memory:\n    max_entries: 0\n",
        "limits.storage.memory.max_entries",
        "must be greater than 0",
    );
    assert_rejects(
        "storage:\n  memory:\n    cleanup_interval: 0s\n",
        "limits.storage.memory.cleanup_interval",
        "must be greater than 0",
    );
    assert_rejects(
        "storage:\n  sqlite:\n    snapshot_interval: often\n",
        "limits.storage.sqlite.snapshot_interval",
        "invalid duration",
    );
}
