//! The ACPI sleep control and status registers of a hardware-reduced ACPI
//! platform (ACPI 6, 4.8.3.7), on I/O ports named in the FADT. Writing
//! SLP_EN with SLP_TYP 5 (the \_S5_ value kiln's DSDT declares) powers the
//! VM off; other sleep states are ignored.

use super::bus::BusDevice;
use super::StopRequest;

const SLP_EN: u8 = 1 << 5;
/// SLP_TYP sits in bits 4:2 of the sleep control register.
const SLP_TYP_SHIFT: u8 = 2;
/// The S5 (soft off) value of \_S5_ in kiln's DSDT.
pub const S5_SLP_TYP: u8 = 5;
/// WAK_STS: the platform is awake.
const WAK_STS: u8 = 1 << 7;

/// Offset 0 is the control register, offset 1 the status register.
#[derive(Debug)]
pub struct AcpiPm;

impl BusDevice for AcpiPm {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(if offset == 1 { WAK_STS } else { 0 });
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) -> Option<StopRequest> {
        let v = *data.first()?;
        let slp_typ = (v >> SLP_TYP_SHIFT) & 0x7;
        (offset == 0 && v & SLP_EN != 0 && slp_typ == S5_SLP_TYP).then_some(StopRequest::Poweroff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut pm = AcpiPm;
        assert_eq!(
            pm.write(0, 0, &[(5 << 2) | 0x20]),
            Some(StopRequest::Poweroff)
        );
        assert_eq!(pm.write(0, 0, &[5 << 2]), None, "without SLP_EN");
        assert_eq!(
            pm.write(0, 0, &[(3 << 2) | 0x20]),
            None,
            "S3 is not poweroff"
        );
        assert_eq!(pm.write(0, 1, &[(5 << 2) | 0x20]), None, "status register");
        let mut d = [0u8];
        pm.read(0, 1, &mut d);
        assert_eq!(d, [0x80]);
    }
}
