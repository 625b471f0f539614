# Workers scale on the consumer group's lag per running worker (MSK's SumOffsetLag over
# ECS's RunningTaskCount), between worker_min_count and worker_max_count (at most the
# partition count: a worker beyond it would own no partition).

resource "aws_appautoscaling_target" "worker" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.service["worker"].name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.worker_min_count
  max_capacity       = var.worker_max_count
}

resource "aws_appautoscaling_policy" "worker_lag" {
  name               = "${var.name}-worker-consumer-lag"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.worker.service_namespace
  resource_id        = aws_appautoscaling_target.worker.resource_id
  scalable_dimension = aws_appautoscaling_target.worker.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.worker_lag_target
    scale_out_cooldown = 60
    scale_in_cooldown  = 300

    customized_metric_specification {
      metrics {
        id          = "lag"
        return_data = false
        metric_stat {
          stat = "Sum"
          metric {
            namespace   = "AWS/Kafka"
            metric_name = "SumOffsetLag"
            dimensions {
              name  = "Cluster Name"
              value = var.kafka_cluster_name
            }
            dimensions {
              name  = "Consumer Group"
              value = var.consumer_group
            }
            dimensions {
              name  = "Topic"
              value = var.lead_events_topic
            }
          }
        }
      }
      metrics {
        id          = "workers"
        return_data = false
        metric_stat {
          stat = "Average"
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "RunningTaskCount"
            dimensions {
              name  = "ClusterName"
              value = aws_ecs_cluster.this.name
            }
            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.service["worker"].name
            }
          }
        }
      }
      metrics {
        id          = "lag_per_worker"
        label       = "lead-events behind per running worker"
        expression  = "lag / workers"
        return_data = true
      }
    }
  }
}

# Lag still growing at the maximum worker count: more workers will not come.
resource "aws_cloudwatch_metric_alarm" "lag_growing" {
  alarm_name          = "${var.name}-consumer-lag-growing"
  alarm_description   = "lead-events consumer lag above ${var.lag_alarm_threshold} for 15 minutes"
  namespace           = "AWS/Kafka"
  metric_name         = "SumOffsetLag"
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 3
  threshold           = var.lag_alarm_threshold
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  dimensions = {
    "Cluster Name"   = var.kafka_cluster_name
    "Consumer Group" = var.consumer_group
    "Topic"          = var.lead_events_topic
  }
}
