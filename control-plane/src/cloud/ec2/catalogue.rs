//! The instance-type catalogue from EC2: DescribeInstanceTypes (every page),
//! on-demand prices from the config's table (EC2 has no price API; the AWS
//! Price List API is a separate service), and the latest spot price of each
//! type (the lowest across availability zones) from DescribeSpotPriceHistory.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{ArchitectureType, InstanceTypeInfo};

use super::Ec2Error;
use orca_model::selection::{Arch, Catalogue, InstanceType};

/// Loads every instance type EC2 offers in the client's region, priced.
pub async fn load(
    client: &aws_sdk_ec2::Client,
    on_demand_usd_per_hour: &BTreeMap<String, f64>,
) -> Result<Catalogue, Ec2Error> {
    let mut types = Vec::new();
    let mut pages = client
        .describe_instance_types()
        .max_results(100)
        .into_paginator()
        .items()
        .send();
    while let Some(info) = pages.next().await {
        let info = info.map_err(Ec2Error::of("DescribeInstanceTypes"))?;
        if let Some(mut t) = instance_type(&info) {
            t.on_demand_usd_per_hour = on_demand_usd_per_hour.get(&t.name).copied();
            types.push(t);
        }
    }
    let spot = spot_prices(client).await?;
    for t in &mut types {
        t.spot_usd_per_hour = spot.get(&t.name).copied();
    }
    Ok(Catalogue::new(types))
}

/// One DescribeInstanceTypes entry; `None` without a name.
pub fn instance_type(info: &InstanceTypeInfo) -> Option<InstanceType> {
    let name = info.instance_type()?.as_str().to_owned();
    let gpu = info.gpu_info().and_then(|g| g.gpus().first());
    Some(InstanceType {
        name,
        vcpus: info
            .v_cpu_info()
            .and_then(|v| v.default_v_cpus())
            .map_or(0, |n| n.max(0) as u32),
        memory_mib: info
            .memory_info()
            .and_then(|m| m.size_in_mib())
            .map_or(0, |n| n.max(0) as u64),
        gpus: info
            .gpu_info()
            .map(|g| g.gpus().iter().filter_map(|d| d.count()).sum::<i32>())
            .map_or(0, |n| n.max(0) as u32),
        gpu_manufacturer: gpu
            .and_then(|d| d.manufacturer())
            .unwrap_or_default()
            .to_owned(),
        gpu_model: gpu.and_then(|d| d.name()).unwrap_or_default().to_owned(),
        gpu_memory_mib: gpu
            .and_then(|d| d.memory_info())
            .and_then(|m| m.size_in_mib())
            .map_or(0, |n| n.max(0) as u64),
        architectures: info
            .processor_info()
            .map(|p| {
                p.supported_architectures()
                    .iter()
                    .filter_map(|a: &ArchitectureType| Arch::parse(a.as_str()))
                    .collect()
            })
            .unwrap_or_default(),
        on_demand_usd_per_hour: None,
        spot_usd_per_hour: None,
    })
}

/// The lowest current Linux spot price of each type across zones.
async fn spot_prices(client: &aws_sdk_ec2::Client) -> Result<BTreeMap<String, f64>, Ec2Error> {
    let mut prices: BTreeMap<String, f64> = BTreeMap::new();
    let now = aws_sdk_ec2::primitives::DateTime::from(std::time::SystemTime::now());
    let mut pages = client
        .describe_spot_price_history()
        .product_descriptions("Linux/UNIX")
        .start_time(now)
        .end_time(now)
        .max_results(1000)
        .into_paginator()
        .items()
        .send();
    while let Some(price) = pages.next().await {
        let price = price.map_err(Ec2Error::of("DescribeSpotPriceHistory"))?;
        let (Some(t), Some(p)) = (
            price.instance_type(),
            price.spot_price().and_then(|p| p.parse::<f64>().ok()),
        ) else {
            continue;
        };
        prices
            .entry(t.as_str().to_owned())
            .and_modify(|low| *low = low.min(p))
            .or_insert(p);
    }
    Ok(prices)
}
