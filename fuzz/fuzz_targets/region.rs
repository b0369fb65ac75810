//! Region parameters from the network: a Join-accept's CFList, LinkADRReq channel-mask blocks
//! and a GWMP `datr`, in a region the input chooses. Beyond "no panic": a refused CFList or
//! LinkADRReq block leaves the channel plan as it was; an accepted CFList is what the plan then
//! gives back (`ChannelPlan::cf_list`); an accepted block leaves at least one channel on; a
//! `datr` read as a data rate prints back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::join::CfList;
use protocol::region::{ChannelPlan, Link, Region};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let region = Region::ALL[usize::from(pick) % Region::ALL.len()];
    let (cf, rest) = rest.split_at(rest.len().min(16));
    let mut plan = ChannelPlan::new(region);
    if let Ok(bytes) = <[u8; 16]>::try_from(cf) {
        let cf = CfList(bytes);
        let before = plan;
        match plan.apply_cf_list(&cf) {
            Err(_) => assert_eq!(plan, before),
            Ok(()) => match (cf.frequencies_hz(), plan.cf_list()) {
                (Some(sent), Some(back)) => assert_eq!(back.frequencies_hz(), Some(sent)),
                (Some(sent), None) => assert_eq!(sent, [0; 5]),
                (None, back) => {
                    assert_eq!(back.and_then(|b| b.channel_masks()), cf.channel_masks())
                }
            },
        }
    }
    let (masks, datr) = rest.split_at(rest.len() / 3 * 3);
    let block: Vec<(u16, u8)> = masks
        .chunks_exact(3)
        .map(|c| (u16::from_le_bytes([c[0], c[1]]), c[2] & 0x07))
        .collect();
    let before = plan;
    match plan.apply_link_adr(&block) {
        Err(_) => assert_eq!(plan, before),
        Ok(()) => assert!(plan.enabled().next().is_some()),
    }
    if let Ok(s) = std::str::from_utf8(datr) {
        for link in [Link::Uplink, Link::Downlink] {
            if let Some(dr) = region.dr_of_datr(s, link) {
                assert_eq!(
                    region.data_rate(dr).map(|d| d.to_string()).as_deref(),
                    Ok(s)
                );
            }
        }
    }
});
