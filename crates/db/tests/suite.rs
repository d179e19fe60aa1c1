//! openraft's own storage test suite against Vigil's redb store.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use vigil_db::store::{LogStore, StateMachine, open_db};
use vigil_db::types::{NodeId, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir.path().join("raft.redb")).unwrap();
        let sm = StateMachine::open(db.clone())?;
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
