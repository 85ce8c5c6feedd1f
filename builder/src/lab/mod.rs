//! kiln appliances as jobs of the engines labs already run: a LAVA job
//! definition ([`lava_job`], `kiln lava-job`) and a labgrid environment
//! ([`labgrid_env`], `kiln labgrid-env`), written for a built image
//! ([`built`]). The way back is `kiln test`: it judges LAVA's log
//! (`--target replay:output.yaml`) and runs images through labgrid
//! (`--target labgrid:ENV`), so kiln's judge gives the verdicts either way.

pub mod built;
pub mod labgrid_env;
pub mod lava_job;
