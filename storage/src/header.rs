//! The header every group's state machine keeps next to its data: the last log entry applied,
//! the membership, and a partition's offsets, written in the same batch as every apply.

use openraft::alias::{LogIdOf, StoredMembershipOf};
use serde::{Deserialize, Serialize};

use crate::engine::{group_key, ReadView, CF_DATA};
use crate::partition::PartitionState;
use crate::{decode, StorageError, TypeConfig};

const TAG_HEADER: u8 = 0;

/// Key of a group's header.
pub(crate) fn header_key(group: u64) -> Vec<u8> {
    group_key(group, &[TAG_HEADER])
}

/// What every state machine persists next to its data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) applied: Option<LogIdOf<TypeConfig>>,
    pub(crate) membership: StoredMembershipOf<TypeConfig>,
    /// A partition's offsets and size (default for other kinds), written with the applied id.
    pub(crate) partition: PartitionState,
}

/// The index of the last log entry applied to `group` as `view` sees it (0: none yet). It is
/// written in the same batch as the entry's changes, so read in one view with the group's data it
/// labels exactly the version of the data that view shows.
pub fn applied_index(view: &dyn ReadView, group: u64) -> Result<u64, StorageError> {
    Ok(match view.get(CF_DATA, &header_key(group))? {
        Some(v) => decode::<Header>(&v)?.applied.map_or(0, |id| id.index),
        None => 0,
    })
}
