variable "name" {
  type = string
}

variable "cidr" {
  type = string
}

variable "availability_zones" {
  type = list(string)
}

variable "nat_per_az" {
  type = bool
}

variable "log_retention_days" {
  type = number
}

variable "kms_key_arn" {
  type = string
}
