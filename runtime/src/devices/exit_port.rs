//! The debug exit port: a guest writes a 1-, 2- or 4-byte value N to port
//! 0xf4 and the VM ends with status N. Reads return 0.

use super::bus::BusDevice;
use super::StopRequest;

#[derive(Debug)]
pub struct ExitPort;

impl BusDevice for ExitPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) -> Option<StopRequest> {
        if offset != 0 {
            return None;
        }
        let value = match *data {
            [a] => u32::from(a),
            [a, b] => u32::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
            _ => return None,
        };
        Some(StopRequest::Exit(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_ends_the_vm_with_its_value() {
        let mut p = ExitPort;
        assert_eq!(p.write(0, 0, &[7]), Some(StopRequest::Exit(7)));
        assert_eq!(
            p.write(0, 0, &[0x34, 0x12]),
            Some(StopRequest::Exit(0x1234))
        );
        assert_eq!(
            p.write(0, 0, &[0x78, 0x56, 0x34, 0x12]),
            Some(StopRequest::Exit(0x1234_5678))
        );
        assert_eq!(p.write(0, 0, &[1, 2, 3]), None);
        assert_eq!(p.write(0, 1, &[1]), None);
    }
}
