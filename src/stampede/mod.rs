//! Stampede control: when many requests miss the same key, the service
//! computes it once.
//!
//! - [`flight`]: single-flight in this process: one request per key leads,
//!   the others wait for its response.
//! - [`lock`]: the cross-instance lock: the leader of each instance asks
//!   for it; the one that gets it calls the service, the others poll the
//!   entry until it is stored (coalescing) or their wait runs out. The lock
//!   is given back by the entry's write, or at once by a request that turns
//!   out not to need it.
//! - [`seen`]: keys lately found stored; a lookup of any other key takes
//!   the lock in the same round trip.

pub(crate) mod flight;
pub(crate) mod lock;
pub(crate) mod seen;

pub(crate) use self::{
    flight::{Flights, Handover, Join, Waited},
    lock::{give_back_lock, Coalesced, HeldLock},
    seen::Seen,
};
