//! The i8042 keyboard controller, only for its CPU reset line: writing 0xfe
//! to the command port (0x64) ends the VM with reason `reboot`, which is how
//! Linux reboots with `reboot=k`. vm-superio's model answers reads with 0.

use super::bus::BusDevice;
use super::StopRequest;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use vm_superio::{I8042Device, Trigger};

/// vm-superio's register offsets from 0x60.
const COMMAND_OFFSET: u8 = 4;

#[derive(Clone, Debug, Default)]
struct ResetLine(Arc<AtomicBool>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// One i8042 port; both share the controller.
#[derive(Debug)]
pub struct I8042Port {
    controller: Arc<Mutex<I8042Device<ResetLine>>>,
    offset: u8,
}

/// Builds the data and command ports of one controller
/// ([`I8042_DATA_PORT`](crate::arch::x86_64::layout::I8042_DATA_PORT) and
/// [`I8042_COMMAND_PORT`](crate::arch::x86_64::layout::I8042_COMMAND_PORT)).
pub fn ports() -> (I8042Port, I8042Port) {
    let controller = Arc::new(Mutex::new(I8042Device::new(ResetLine::default())));
    (
        I8042Port {
            controller: controller.clone(),
            offset: 0,
        },
        I8042Port {
            controller,
            offset: COMMAND_OFFSET,
        },
    )
}

impl BusDevice for I8042Port {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        let mut c = self
            .controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(first) = data.first_mut() {
            *first = c.read(self.offset);
        }
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) -> Option<StopRequest> {
        let mut c = self
            .controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let value = *data.first()?;
        // The trigger cannot fail (Infallible).
        let _ = c.write(self.offset, value);
        let line = &c.reset_evt().0;
        line.swap(false, Ordering::SeqCst)
            .then_some(StopRequest::Reboot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_reboots_and_nothing_else_does() {
        let (mut data, mut cmd) = ports();
        assert_eq!(
            data.write(0, 0, &[0xfe]),
            None,
            "0xfe on the data port is a key, not a reset"
        );
        assert_eq!(cmd.write(0, 0, &[0x20]), None);
        assert_eq!(cmd.write(0, 0, &[0xfe]), Some(StopRequest::Reboot));
        assert_eq!(
            cmd.write(0, 0, &[0xaa]),
            None,
            "the line resets after a request"
        );
        let mut d = [0xffu8];
        cmd.read(0, 0, &mut d);
        assert_eq!(d, [0]);
    }
}
