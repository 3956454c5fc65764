from services.common.service import main, no_servicers

if __name__ == "__main__":
    main("payouts", no_servicers)
