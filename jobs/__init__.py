"""Jobs, partitions, schedules and sensors: when and on what trigger assets run."""
